"""Audit entries: what every part of facestream writes when it acts on someone's behalf.

An entry (`audit.entry`, contracts/) says who did what, when, about which image, subject, case or
subscription, by reference only. Stages return it as one more output of the record they processed
(so it is written before the record is acknowledged, like the rest); servers and commands write it
with `send` or `write`. The audit sequencer (services/audit/) chains the entries into the tamper-evident
audit log. Entry ids derive from what happened, so an action redelivered is chained once.
"""

from __future__ import annotations

import getpass
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from facestream import contracts
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso
from facestream.io.kafka import producer, running
from facestream.runtime.stage import Output

ENTRIES = "audit.entries"  # short topic name (see facestream.io.kafka.pipeline_topics)
_NAMESPACE = uuid.UUID("0d6f1c9a-2f5e-4f59-8f0a-5b7e3c1a9d42")
_REFS = ("image_id", "subject_id", "case_ref", "match_event_id", "point_id", "subscription", "token", "watchlists")


def cli_actor() -> str:
    """The identity of a person running a command here: their operating-system user."""
    return f"cli:{getpass.getuser()}"


def entry(
    action: str,
    actor: str,
    service: str,
    basis: str,
    *,
    occurred_at: str | None = None,
    details: dict[str, Any] | None = None,
    **refs: Any,
) -> dict[str, Any]:
    """An `audit.entry`. `basis` names the occurrence uniquely (an event id, a request id): the
    entry id derives from it, so writing the same occurrence twice chains it once. `refs` are the
    references the contract lists (image_id, subject_id, case_ref, ...); those None are left out."""
    unknown = set(refs) - set(_REFS)
    if unknown:
        raise TypeError(f"not an audit reference: {sorted(unknown)}")
    value = {
        "schema_version": 1,
        "event_type": "audit.entry",
        "entry_id": str(uuid.uuid5(_NAMESPACE, f"{action}/{basis}")),
        "action": action,
        "actor": actor[:160],
        "service": service,
        "occurred_at": occurred_at or now_iso(),
        "refs": {k: v for k, v in refs.items() if v is not None},
        "details": {k: v for k, v in (details or {}).items() if v is not None},
    }
    contracts.validate("audit.entry", value)  # a wrong entry is a bug here, not at the sequencer
    return value


def output(value: dict[str, Any]) -> Output:
    """`value` (an entry) as a stage's output."""
    return Output(ENTRIES, value["entry_id"], value)


async def send(settings: Settings, producer: AIOKafkaProducer, *entries: dict[str, Any]) -> None:
    """Write `entries` with `producer` (a server's or a command's own); returns once the broker has
    them: an action is not reported done before its audit is."""
    topic = settings.topic(ENTRIES)
    sent = [await producer.send(topic, contracts.dumps(e), key=e["entry_id"].encode(), partition=0) for e in entries]
    for ack in sent:
        await ack


async def write(settings: Settings, *entries: dict[str, Any]) -> None:
    """Write `entries` with a producer of their own."""
    async with running(producer(settings)) as prod:
        await send(settings, prod, *entries)
