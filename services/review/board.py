"""The review board: every match waiting for review, its candidates' review state, and decisions.

It follows two topics from their beginning, without a consumer group (every API worker keeps the
whole board): `matches` (the results with candidates become cases) and `reviews` (decisions,
folded with facestream.review in topic order). A probe crop is read from `crops` only when a
reviewer opens it, found by its key's partition and its submission time. Decisions are checked
against the board as this worker sees it, then written to `reviews` with their audit entry; a
decision that races another (two workers at once) is settled by the fold, which every reader
applies in the same order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from facestream import audit, contracts, crops, review
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso, parse_iso
from facestream.errors import UsageError
from facestream.io.kafka import close, consumer, follow, producer, topic_partitions
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

    def describe(self, ledger: review.Ledger, crops_kept_s: float) -> dict[str, Any]:
        out = {k: self.match[k] for k in SHOWN if k in self.match}
        intent = self.match.get("intent", {})
        out.update({k: intent[k] for k in ("purpose", "case_ref", "requester") if k in intent})
        out["candidates"] = [
            {**c, "review": ledger.of(self.match["event_id"], c["subject_id"]).describe()}
            for c in self.match["candidates"]
        ]
        undecided = any(c["review"]["status"] in ("pending", "confirming") for c in out["candidates"])
        out["status"] = "pending" if undecided else "reviewed"
        kept_until = parse_iso(self.match["occurred_at"]).timestamp() + crops_kept_s
        out["has_crop"] = time.time() < kept_until  # the crops topic keeps a probe as long as its match may be sent
        return out


def decision_id(match_event_id: str, subject_id: str, reviewer: str) -> str:
    return str(uuid.uuid5(_DECISIONS, f"{match_event_id}/{subject_id}/{reviewer}"))


class Board:
    def __init__(self, settings: Settings, follow: bool = True) -> None:
        self.settings = settings
        self.follow = follow
        self.cases: dict[str, Case] = {}
        self.ledger = review.Ledger()
        self._consumer: AIOKafkaConsumer | None = None
        self._crops = crops.CropFinder(settings)
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topics = [self.settings.topic(t) for t in ("matches", review.TOPIC)]
        known = await topic_partitions(self.settings, topics)
        parts = [TopicPartition(t, p) for t in topics for p in known.get(t, [])]
        self._producer = producer(self.settings)
        await self._producer.start()
        self._consumer = consumer(self.settings)
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
        await self._crops.close()
        await close(self._consumer, self._producer)

    def _apply(self, record: Any) -> None:
        if record.value is None:
            return
        short = record.topic.removeprefix(f"{self.settings.topic_prefix}.")
        try:
            value = orjson.loads(record.value)
            if short == "matches" and value.get("status") == "match" and value.get("candidates"):
                self.cases.setdefault(value["event_id"], Case(value))
            elif short == review.TOPIC:
                contracts.validate("review.decision", value)
                self.ledger.apply(value)
        except Exception as exc:  # a record the board cannot read is left out, not fatal
            log.warning("review_board_skipped", topic=short, offset=record.offset, error=str(exc)[:200])

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Cases with a candidate not yet confirmed or rejected, oldest first."""
        out = [c.describe(self.ledger, self.settings.webhook_event_ttl_s) for c in self.cases.values()]
        return sorted((c for c in out if c["status"] == "pending"), key=lambda c: c["occurred_at"])[:limit]

    def show(self, match_event_id: str) -> dict[str, Any]:
        case = self.cases.get(match_event_id)
        if case is None:
            raise DecisionRefused(f"no match {match_event_id!r} with candidates (or no longer held)", 404)
        return case.describe(self.ledger, self.settings.webhook_event_ttl_s)

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
        data = await self._find_crop(case.match) if case is not None else None
        if case is None or data is None:
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
        return data

    async def _find_crop(self, match: dict[str, Any]) -> bytes | None:
        return await self._crops.find(match["image_id"], match["event_id"], crops.submitted(match))
