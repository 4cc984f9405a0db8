"""Producing a batch's results so that every record ends as its outputs or its dead letter.

The agent hands a batch to `Emitter.emit` and acknowledges the batch only when it returns. So it
returns only once the broker has acknowledged, for every record, either all its outputs or its
dead letter:

- a message the broker refuses for good (too large, an invalid record) turns its record into a
  dead letter (reason `output_rejected`), and only that record: its batch-mates go on;
- anything else (broker away, timeouts, leadership changes) is retried with backoff, for as long
  as it takes: an output that never arrives must never be acknowledged as processed;
- dead letters are small (a reference to the record and the reason, never its value), so the
  broker always takes them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from facestream import audit, contracts
from facestream.errors import OutputRejected, RejectedEvent
from facestream.ops.logs import get_logger
from facestream.ops.metrics import DEAD_LETTERS, EMIT_RETRIES, EVENTS_PRODUCED
from facestream.runtime.stage import Outcome, Record, dead_letter, safe_trace_header

log = get_logger(__name__)
_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")  # contracts' image_id

# Sends one message (short topic name, key, value, headers); resolves to the broker's answer.
Send = Callable[[str, bytes | None, bytes, dict[str, bytes]], Awaitable[Awaitable[Any]]]
# Per-record refusals: the same message would be refused again, whatever the broker's state.
_REFUSED = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    TypeError,
)


@dataclass
class _Message:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


@dataclass
class _Plan:
    """What one record still has to get acknowledged: its outputs, or its dead letter."""

    record: Record
    messages: list[_Message]
    letter: dict[str, Any] | None = None
    produced: list[str] = field(default_factory=list)


def refusal_entry(stage: str, letter: dict[str, Any], intent: dict[str, Any] | None) -> dict[str, Any]:
    """The audit entry of a refused event: the stage, the reason and, when the stage had read the
    event's intent, who asked (requester or enroller), for which case or subject."""
    intent = intent or {}
    asker = intent.get("requester") or intent.get("consent", {}).get("enrolled_by")
    image_id = letter["image_id"] if letter["image_id"] and _IMAGE_ID.match(letter["image_id"]) else None
    return audit.entry(
        "refusal",
        asker or "upstream:unknown",
        stage,
        letter["event_id"],
        occurred_at=letter["occurred_at"],
        details={
            "stage": stage,
            "reason": letter["reason"],
            "kind": intent.get("kind"),
            "purpose": intent.get("purpose"),
        },
        image_id=image_id,
        case_ref=intent.get("case_ref"),
        subject_id=intent.get("subject_id"),
    )


class Emitter:
    def __init__(self, stage: str, send: Send, retry_initial_s: float = 0.2, retry_max_s: float = 10.0) -> None:
        self.stage = stage
        self.send = send
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s

    def _dead(self, plan: _Plan, error: BaseException) -> None:
        letter = dead_letter(self.stage, plan.record, error)
        headers = safe_trace_header(plan.record)
        plan.letter = letter
        plan.messages = [_Message("dlq", plan.record.key_bounded, contracts.dumps(letter), headers)]
        if isinstance(error, RejectedEvent) and not error.transient:  # a refusal: who asked, and why not
            entry = refusal_entry(self.stage, letter, (error.event or {}).get("intent"))
            plan.messages.append(_Message(audit.ENTRIES, entry["entry_id"].encode(), contracts.dumps(entry), headers))

    def _plan(self, record: Record, outcome: Outcome) -> _Plan:
        plan = _Plan(record, [])
        if outcome.error is not None:
            self._dead(plan, outcome.error)
            return plan
        headers = safe_trace_header(record)
        for out in outcome.outputs:
            trace = out.value.get("trace_id")
            out_headers = {"trace-id": trace.encode()} if trace else headers
            plan.messages.append(_Message(out.topic, out.key.encode(), contracts.dumps(out.value), out_headers))
        return plan

    async def _attempt(self, message: _Message) -> BaseException | None:
        try:
            await (await self.send(message.topic, message.key, message.value, message.headers))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc
        return None

    async def emit(self, records: Sequence[Record], outcomes: Sequence[Outcome]) -> None:
        """Returns when every record's outputs, or its dead letter, are acknowledged."""
        plans = [self._plan(r, o) for r, o in zip(records, outcomes, strict=True)]
        pending = [p for p in plans if p.messages]
        delay = self.retry_initial_s
        while pending:
            flat = [(plan, message) for plan in pending for message in plan.messages]
            errors = await asyncio.gather(*(self._attempt(m) for _, m in flat))
            failed: dict[int, list[tuple[_Message, BaseException]]] = {}
            for (plan, message), error in zip(flat, errors, strict=True):
                if error is None:
                    plan.produced.append(message.topic)
                else:
                    failed.setdefault(id(plan), []).append((message, error))
            retry: list[_Plan] = []
            transient: list[BaseException] = []
            for plan in pending:
                problems = failed.get(id(plan))
                if not problems:
                    continue
                retry.append(plan)
                refused = next((e for _, e in problems if isinstance(e, _REFUSED)), None)
                if refused is None:  # only these messages again, after a pause
                    plan.messages = [m for m, _ in problems]
                    transient += [e for _, e in problems]
                elif plan.letter is None:  # its outputs cannot be written: a dead letter instead
                    self._dead(plan, OutputRejected(f"{type(refused).__name__}: {refused}"[:500]))
                else:
                    raise RuntimeError(f"the broker refuses a dead letter: {refused}")
            if transient:
                EMIT_RETRIES.labels(self.stage).inc(len(transient))
                log.warning("emit_retry", stage=self.stage, messages=len(transient), error=str(transient[0])[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
            pending = retry
        for plan in plans:
            self._count(plan)

    def _count(self, plan: _Plan) -> None:
        if plan.letter is not None:
            DEAD_LETTERS.labels(self.stage, plan.letter["reason"]).inc()
            log.warning(
                "dead_letter",
                stage=self.stage,
                reason=plan.letter["reason"],
                image_id=plan.letter["image_id"],
                detail=plan.letter["detail"][:300],
            )
            return
        for topic in plan.produced:
            EVENTS_PRODUCED.labels(self.stage, topic).inc()
