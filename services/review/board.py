"""The review board: every match waiting for review, its candidates' review state, and decisions.

It follows three topics from their beginning, without a consumer group (every API worker keeps
the whole board): `matches` (the results with candidates become cases), `reviews` (decisions,
folded with facestream.review in topic order) and `crops` (only where each probe crop is, read
back when a reviewer opens it). Decisions are checked against the board as this worker sees it,
then written to `reviews` with their audit entry; a decision that races another (two workers at
once) is settled by the fold, which every reader applies in the same order.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from facestream import audit, contracts, review
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso
from facestream.errors import UsageError
from facestream.io.kafka import close, follow, producer, topic_partitions
from facestream.ops.logs import get_logger
from facestream.runtime.tasks import cancel

log = get_logger(__name__)
_DECISIONS = uuid.UUID("3a0e8f57-1c4b-4b8e-a7d2-6f1e0c9b5d23")
# What a reviewer sees of a match result (with its intent's purpose, case and requester).
SHOWN = (
    "event_id",
    "image_id",
    "face_index",
    "face_count",
    "bbox",
    "threshold",
    "operating_point",
    "gallery",
    "model",
    "occurred_at",
    "source",
    "captured_at",
)


class DecisionRefused(UsageError):
    """A decision the board cannot take: `status` is the HTTP status that says why."""

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


@dataclass
class Case:
    """A match result with candidates, as a reviewer sees it: no embedding, no image."""

    match: dict[str, Any]
    crop: tuple[TopicPartition, int] | None = None

    def describe(self, ledger: review.Ledger) -> dict[str, Any]:
        out = {k: self.match[k] for k in SHOWN if k in self.match}
        intent = self.match.get("intent", {})
        out.update({k: intent[k] for k in ("purpose", "case_ref", "requester") if k in intent})
        out["candidates"] = [
            {**c, "review": ledger.of(self.match["event_id"], c["subject_id"]).describe()}
            for c in self.match["candidates"]
        ]
        undecided = any(c["review"]["status"] in ("pending", "confirming") for c in out["candidates"])
        out["status"] = "pending" if undecided else "reviewed"
        out["has_crop"] = self.crop is not None
        return out


def decision_id(match_event_id: str, subject_id: str, reviewer: str) -> str:
    return str(uuid.uuid5(_DECISIONS, f"{match_event_id}/{subject_id}/{reviewer}"))


class Board:
    def __init__(self, settings: Settings, follow: bool = True) -> None:
        self.settings = settings
        self.follow = follow
        self.cases: dict[str, Case] = {}
        self.ledger = review.Ledger()
        self._crops: dict[str, tuple[TopicPartition, int]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._reader_lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topics = [self.settings.topic(t) for t in ("matches", review.TOPIC, "crops")]
        known = await topic_partitions(self.settings, topics)
        parts = [TopicPartition(t, p) for t in topics for p in known.get(t, [])]
        self._producer = producer(self.settings)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=1 << 20
        )
        await self._consumer.start()
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        ends = await self._consumer.end_offsets(parts)
        while [tp for tp, end in ends.items() if await self._consumer.position(tp) < end]:
            for records in (await self._consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    self._apply(record)
        if self.follow:
            self._task = asyncio.create_task(follow(self._consumer, self._apply))

    async def stop(self) -> None:
        await cancel(self._task)
        await close(self._consumer, self._reader, self._producer)

    def _apply(self, record: Any) -> None:
        if record.value is None:
            return
        short = record.topic.removeprefix(f"{self.settings.topic_prefix}.")
        try:
            value = orjson.loads(record.value)
            if short == "matches" and value.get("status") == "match" and value.get("candidates"):
                case = self.cases.setdefault(value["event_id"], Case(value))
                case.crop = case.crop or self._crops.get(value["event_id"])
            elif short == review.TOPIC:
                contracts.validate("review.decision", value)
                self.ledger.apply(value)
            elif short == "crops":
                where = (TopicPartition(record.topic, record.partition), record.offset)
                self._crops[value["event_id"]] = where
                if value["event_id"] in self.cases:
                    self.cases[value["event_id"]].crop = where
        except Exception as exc:  # a record the board cannot read is left out, not fatal
            log.warning("review_board_skipped", topic=short, offset=record.offset, error=str(exc)[:200])

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Cases with a candidate not yet confirmed or rejected, oldest first."""
        out = [c.describe(self.ledger) for c in self.cases.values()]
        return sorted((c for c in out if c["status"] == "pending"), key=lambda c: c["occurred_at"])[:limit]

    def show(self, match_event_id: str) -> dict[str, Any]:
        case = self.cases.get(match_event_id)
        if case is None:
            raise DecisionRefused(f"no match {match_event_id!r} with candidates (or no longer held)", 404)
        return case.describe(self.ledger)

    async def decide(
        self, match_event_id: str, subject_id: str, verdict: str, reviewer: str, note: str = ""
    ) -> dict[str, Any]:
        """Record `reviewer`'s `verdict` (confirm or reject) on one candidate; the candidate's review
        after it. Refused (DecisionRefused) for an unknown match or candidate, a candidate already
        confirmed or rejected, or a reviewer confirming twice."""
        assert self._producer is not None
        case = self.cases.get(match_event_id)
        if case is None:
            raise DecisionRefused(f"no match {match_event_id!r} with candidates (or no longer held)", 404)
        candidate = next((c for c in case.match["candidates"] if c["subject_id"] == subject_id), None)
        if candidate is None:
            raise DecisionRefused(f"subject {subject_id!r} is not a candidate of this match", 404)
        why = self.ledger.of(match_event_id, subject_id).refusal(reviewer)
        if why is not None:
            raise DecisionRefused(why, 409)
        decision: dict[str, Any] = {
            "schema_version": 1,
            "event_type": "review.decision",
            "event_id": decision_id(match_event_id, subject_id, reviewer),
            "match_event_id": match_event_id,
            "image_id": case.match["image_id"],
            "subject_id": subject_id,
            "watchlist": candidate["watchlist"],
            "score": candidate["score"],
            "rank": candidate["rank"],
            "decision": verdict,
            "reviewer": reviewer,
            "decided_at": now_iso(),
        }
        case_ref = case.match.get("intent", {}).get("case_ref")
        if case_ref:
            decision["case_ref"] = case_ref
        if note:
            decision["note"] = note[:500]
        contracts.validate("review.decision", decision)
        entry = audit.entry(
            "review_decision",
            reviewer,
            "review",
            decision["event_id"],
            details={"decision": verdict, "score": candidate["score"], "rank": candidate["rank"]},
            image_id=case.match["image_id"],
            subject_id=subject_id,
            case_ref=case_ref,
            match_event_id=match_event_id,
            watchlists=[candidate["watchlist"]],
        )
        await audit.send(self.settings, self._producer, entry)
        topic = self.settings.topic(review.TOPIC)
        await self._producer.send_and_wait(topic, contracts.dumps(decision), key=match_event_id.encode())
        _, after = self.ledger.apply(decision)
        log.info("review_decided", match_event_id=match_event_id, decision=verdict, status=after.status)
        return {"decision": decision, "review": after.describe()}

    async def crop(self, match_event_id: str, reader: str) -> bytes | None:
        """The probe crop of a case (JPEG), read back from the crops topic while it keeps it;
        audited as fetched by `reader`."""
        case = self.cases.get(match_event_id)
        if case is None or case.crop is None:
            return None
        tp, offset = case.crop
        async with self._reader_lock:
            if self._reader is None:
                self._reader = AIOKafkaConsumer(
                    bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
                )
                await self._reader.start()
            if tp not in self._reader.assignment():
                self._reader.assign([*self._reader.assignment(), tp])
            self._reader.seek(tp, offset)
            batch = await self._reader.getmany(tp, timeout_ms=5000, max_records=1)
        records = [r for r in batch.get(tp, []) if r.offset == offset]
        if not records or records[0].value is None:
            return None
        assert self._producer is not None
        entry = audit.entry(
            "crop_fetch",
            reader,
            "review",
            f"{match_event_id}/{reader}/{now_iso()}",
            details={"for": "review"},
            match_event_id=match_event_id,
            image_id=case.match["image_id"],
        )
        await audit.send(self.settings, self._producer, entry)
        return base64.b64decode(orjson.loads(records[0].value)["data_b64"])
