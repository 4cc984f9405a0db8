"""What every stage shares: the record a stage receives, the outcome it returns, dead letters.

A stage is a plain object with `async process(records) -> outcomes` (one outcome per record, in
order). It never talks to Kafka: the faust agent (see `facestream.runtime.app`) feeds it batches and
produces its outputs, so the logic is tested without a broker and the agents stay thin.
"""

from __future__ import annotations

import base64
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from facestream.contracts import ids
from facestream.contracts.timeutil import now_iso
from facestream.errors import RejectedEvent
from facestream.ops.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record, as a stage sees it."""

    value: bytes
    key: bytes | None = None
    topic: str = ""
    partition: int = 0
    offset: int = 0
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def trace_id(self) -> str | None:
        raw = self.headers.get("trace-id")
        return raw.decode(errors="replace") if raw else None


@dataclass(frozen=True)
class Output:
    """An event to produce: `topic` is the short name (faces, embeddings, matches)."""

    topic: str
    key: str
    value: dict[str, Any]


@dataclass
class Outcome:
    outputs: list[Output] = field(default_factory=list)
    error: BaseException | None = None


class Stage(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def process(self, records: Sequence[Record]) -> list[Outcome]: ...


def reason_of(error: BaseException) -> str:
    if isinstance(error, RejectedEvent):
        return error.reason
    return getattr(error, "reason", "internal_error")


def dead_letter(stage: str, record: Record, error: BaseException) -> dict[str, Any]:
    """The dead.letter event for `record`, with the original bytes so it can be replayed."""
    detail = error.detail if isinstance(error, RejectedEvent) else f"{type(error).__name__}: {error}"
    key = record.key.decode(errors="replace") if record.key is not None else None
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_type": "dead.letter",
        "event_id": ids.event_id(f"dlq/{stage}", f"{record.topic}/{record.partition}/{record.offset}"),
        "stage": stage,
        "reason": reason_of(error),
        "detail": detail[:2000],
        "image_id": key,
        "trace_id": record.trace_id,
        "source_topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": key,
        "payload_b64": base64.b64encode(record.value).decode(),
        "occurred_at": now_iso(),
    }
    if not isinstance(error, RejectedEvent):
        log.error(
            "stage_internal_error",
            stage=stage,
            offset=record.offset,
            error="".join(traceback.format_exception_only(error)).strip()[:500],
        )
    return event


# The fields a face keeps from stage to stage (see the contracts).
FACE_FIELDS = (
    "image_id",
    "trace_id",
    "face_index",
    "face_count",
    "bbox",
    "intent",
    "source",
    "captured_at",
    "submitted_at",
)


def carry(event: dict[str, Any], *names: str) -> dict[str, Any]:
    """The fields of `event` named, those it has, for the event a stage emits from it."""
    return {n: event[n] for n in names if n in event}
