"""What every stage shares: the record a stage receives, the outcome it returns, dead letters.

A stage is a plain object with `async process(records) -> outcomes` (one outcome per record, in
order). It never talks to Kafka: the faust agent (see `facestream.runtime.app`) feeds it batches and
produces its outputs, so the logic is tested without a broker and the agents stay thin.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from facestream.contracts import ids
from facestream.contracts.timeutil import now_iso
from facestream.errors import MalformedEvent, RejectedEvent
from facestream.ops.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record, as a stage sees it."""

    value: bytes | None  # None: a tombstone, which no stage accepts
    key: bytes | None = None
    topic: str = ""
    partition: int = 0
    offset: int = 0
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def trace_id(self) -> str | None:
        """The `trace-id` header, if it is one (printable ASCII, at most 64 characters)."""
        raw = self.headers.get("trace-id")
        return raw.decode() if raw and _TRACE_ID.match(raw) else None

    @property
    def key_bounded(self) -> bytes | None:
        """The key cut to `MAX_KEY_BYTES`: what dead letters and logs may carry of it."""
        return None if self.key is None else self.key[:MAX_KEY_BYTES]


# What a record must look like before any stage spends work on it (see `screen`).
MAX_KEY_BYTES = 256
MAX_HEADER_BYTES = 4096
_TRACE_ID = re.compile(rb"^[\x21-\x7e]{1,64}$")


def screen(record: Record) -> RejectedEvent | None:
    """Why `record` can never be processed, from its envelope alone (checked before the stage
    sees it, so one bad record costs nothing and takes no batch-mate with it); None if it can."""
    if record.value is None:
        return MalformedEvent("record has no value (a tombstone)")
    if record.key is not None and len(record.key) > MAX_KEY_BYTES:
        return MalformedEvent(f"record key is {len(record.key)} bytes; at most {MAX_KEY_BYTES}")
    if record.key is not None:
        try:
            record.key.decode()
        except UnicodeDecodeError:
            return MalformedEvent("record key is not UTF-8 text")
    size = sum(len(k) + len(v) for k, v in record.headers.items())
    if size > MAX_HEADER_BYTES:
        return MalformedEvent(f"record headers are {size} bytes; at most {MAX_HEADER_BYTES}")
    if "trace-id" in record.headers and record.trace_id is None:
        return MalformedEvent("trace-id header must be 1 to 64 printable ASCII characters")
    return None


def safe_trace_header(record: Record) -> dict[str, bytes]:
    """The headers outputs of `record` carry: its trace id, when it is a valid one."""
    trace = record.trace_id
    return {"trace-id": trace.encode()} if trace else {}


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
    """The dead.letter event for `record`: where the record is (topic, partition, offset) and why it
    was refused, never its value: images, face pixels and embeddings stay out of the dead letters,
    which outlive the transit topics. A replay reads the original while its topic still holds it."""
    detail = error.detail if isinstance(error, RejectedEvent) else f"{type(error).__name__}: {error}"
    bounded = record.key_bounded
    key = bounded.decode(errors="replace")[:MAX_KEY_BYTES] if bounded is not None else None
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
        "transient": bool(getattr(error, "transient", False)),
        "occurred_at": now_iso(),
    }
    submitted = error.event.get("submitted_at") if isinstance(error, RejectedEvent) and error.event else None
    if isinstance(submitted, str):
        event["submitted_at"] = submitted
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
    "image_sha256",
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
