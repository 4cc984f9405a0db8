"""Reading the audit chain back: verification and search."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from facestream.config import Settings
from facestream.contracts.timeutil import parse_iso
from facestream.io.kafka import read_topic
from facestream.services.audit.chain import Verdict, verify
from facestream.services.audit.sequencer import verify_key


async def check(settings: Settings, topic: str = "audit", witness_topic: str = "audit.checkpoints") -> Verdict:
    """Verify the chain in `topic` against the witnesses in `witness_topic` (short names)."""
    # Witnesses first: each is committed with the chain records it covers, so a chain read after
    # them holds every checkpoint they name, however far the sequencer has gone in between.
    witnesses = await read_topic(settings, settings.topic(witness_topic), committed=True)
    chain = await read_topic(settings, settings.topic(topic), committed=True)
    return verify([(r.offset, r.value) for r in chain], verify_key(settings), [(w.offset, w.value) for w in witnesses])


@dataclass(frozen=True)
class Query:
    """What to look for; every field given must match."""

    case_ref: str | None = None
    actor: str | None = None
    subject_id: str | None = None
    image_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        entry = record["entry"]
        refs = entry["refs"]
        when = parse_iso(entry["occurred_at"])
        return (
            (self.case_ref is None or refs.get("case_ref") == self.case_ref)
            and (self.actor is None or entry["actor"] == self.actor)
            and (self.subject_id is None or refs.get("subject_id") == self.subject_id)
            and (self.image_id is None or refs.get("image_id") == self.image_id)
            and (self.action is None or entry["action"] == self.action)
            and (self.since is None or when >= self.since)
            and (self.until is None or when < self.until)
        )


async def records(settings: Settings, topic: str = "audit") -> list[dict[str, Any]]:
    """Every chained entry (`audit.record`), in chain order; checkpoints left out."""
    values = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic(topic), committed=True)]
    return [v for v in values if v.get("event_type") == "audit.record"]


async def search(settings: Settings, query: Query, limit: int = 1000) -> list[dict[str, Any]]:
    """The chained entries `query` matches, oldest first, at most `limit` (the newest ones)."""
    found = [r for r in await records(settings) if query.matches(r)]
    return found[-limit:]
