"""What became of a submission: its match results, or its dead letter.

Every API worker follows the matches and dead-letter topics (from `api_outcome_window_s` before it
started) and keeps the recent outcomes in memory, bounded. A match result belongs to the submission
with the same image id and `submitted_at`; so does a dead letter that carries them (the stage could
read the event), else it belongs to the submission at the topic position it names, which the worker
that published it knows. `wait` lets a request be held until the outcome
is complete: a search is complete when every face it found has its result (or it found none).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from facestream.config import Settings
from facestream.io.kafka import close, connection, follow, topic_partitions
from facestream.ops.logs import get_logger
from facestream.runtime.tasks import cancel

log = get_logger(__name__)
MAX_OUTCOMES = 100_000
UNKNOWN = "(unknown)"  # a submitter no token is named (no token name has parentheses)


@dataclass
class Outcome:
    image_id: str
    submitted_at: str
    kind: str = ""  # search or enroll, once known
    requester: str = ""  # the token name that submitted it, once known
    results: dict[int | None, dict[str, Any]] = field(default_factory=dict)  # by face index
    dead_letter: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: dict[str, Any]) -> None:
        self.results[event.get("face_index")] = event
        count = event.get("face_count") or 0
        if event["status"] in ("no_face", "enrolled") or len(self.results) >= count:
            self.done.set()

    def reject(self, letter: dict[str, Any]) -> None:
        self.dead_letter = letter
        self.done.set()

    @property
    def state(self) -> str:
        if self.dead_letter is not None:
            return "rejected"
        return "done" if self.done.is_set() else "pending"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image_id": self.image_id,
            "submitted_at": self.submitted_at,
            "state": self.state,
            "results": [self.results[k] for k in sorted(self.results, key=lambda i: -1 if i is None else i)],
        }
        if self.kind:
            out["kind"] = self.kind
        if self.dead_letter is not None:
            letter = self.dead_letter
            out["rejection"] = {"stage": letter["stage"], "reason": letter["reason"], "detail": letter["detail"]}
        return out


def _submitter(event: dict[str, Any]) -> str:
    intent = event.get("intent") or {}
    return str(intent.get("requester") or (intent.get("consent") or {}).get("enrolled_by") or "")


class Outcomes:
    """The matches and dlq topics, followed; outcomes by image id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_image: OrderedDict[str, Outcome] = OrderedDict()
        self._by_position: dict[tuple[int, int], Outcome] = {}
        self._letters: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()  # before their position is known
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topics = [self.settings.topic("matches"), self.settings.topic("dlq")]
        parts = [TopicPartition(t, p) for t, ps in (await topic_partitions(self.settings, topics)).items() for p in ps]
        self._consumer = AIOKafkaConsumer(**connection(self.settings), enable_auto_commit=False, group_id=None)
        await self._consumer.start()
        self._consumer.assign(parts)
        since = int((time.time() - self.settings.api_outcome_window_s) * 1000)
        found = await self._consumer.offsets_for_times(dict.fromkeys(parts, since))
        ends = await self._consumer.end_offsets(parts)
        for tp in parts:
            at = found.get(tp)
            self._consumer.seek(tp, at.offset if at is not None else ends[tp])
        self._task = asyncio.create_task(follow(self._consumer, self._record))

    async def stop(self) -> None:
        await cancel(self._task)
        await close(self._consumer)

    def _entry(self, image_id: str, submitted_at: str) -> Outcome:
        known = self._by_image.get(image_id)
        if known is None or known.submitted_at < submitted_at:  # ISO timestamps in UTC order as text
            known = Outcome(image_id, submitted_at)
            self._by_image[image_id] = known
            while len(self._by_image) > MAX_OUTCOMES:
                self._by_image.popitem(last=False)
        self._by_image.move_to_end(image_id)
        return known

    def expect(self, event: dict[str, Any]) -> Outcome:
        """The outcome of the submission `event`, about to be published."""
        outcome = self._entry(event["image_id"], event["submitted_at"])
        outcome.kind = event["intent"]["kind"]
        outcome.requester = _submitter(event)
        return outcome

    def published(self, outcome: Outcome, partition: int, offset: int) -> None:
        """Where the submission landed: its dead letter, if it gets one, names that position."""
        self._by_position[(partition, offset)] = outcome
        while len(self._by_position) > MAX_OUTCOMES:
            self._by_position.pop(next(iter(self._by_position)))
        letter = self._letters.pop((partition, offset), None)
        if letter is not None:
            outcome.reject(letter)

    def get(self, image_id: str) -> Outcome | None:
        return self._by_image.get(image_id)

    async def wait(self, outcome: Outcome, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(outcome.done.wait(), seconds)

    def _record(self, record: Any) -> None:
        try:
            event = orjson.loads(record.value or b"")
            if record.topic == self.settings.topic("dlq"):
                self._letter(event)
            elif event.get("event_type") == "match.result" and "submitted_at" in event:
                outcome = self._entry(event["image_id"], event["submitted_at"])
                if outcome.submitted_at == event["submitted_at"]:
                    outcome.kind = outcome.kind or event["intent"]["kind"]
                    if outcome.requester in ("", UNKNOWN):
                        outcome.requester = _submitter(event)
                    outcome.add(event)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("outcome_unreadable", topic=record.topic, offset=record.offset, error=str(exc)[:200])

    def _letter(self, letter: dict[str, Any]) -> None:
        if "submitted_at" in letter and letter.get("image_id"):  # it names its submission: any worker knows it
            named = self._entry(letter["image_id"], letter["submitted_at"])
            named.requester = named.requester or UNKNOWN  # a letter names no one: auditors only see it
            if named.submitted_at == letter["submitted_at"] and named.state == "pending":
                named.reject(letter)
            return
        if letter.get("source_topic") != self.settings.topic("images"):
            # A later stage refused one of its faces (an enrolment the matcher turns down): the
            # letter names the image, and comes after the submission it belongs to.
            outcome = self._by_image.get(letter.get("image_id") or "")
            if outcome is not None and outcome.state == "pending" and letter["occurred_at"] >= outcome.submitted_at:
                outcome.reject(letter)
            return
        position = (letter["partition"], letter["offset"])
        outcome = self._by_position.get(position)
        if outcome is not None:
            outcome.reject(letter)
            return
        self._letters[position] = letter
        while len(self._letters) > 10_000:
            self._letters.popitem(last=False)
