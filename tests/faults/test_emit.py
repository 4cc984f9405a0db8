"""Emitting a batch's results: a record whose outputs the broker refuses becomes a dead letter (its
batch-mates are written), a dead letter too large to write goes without its payload, and
transient send failures are retried until they succeed, never skipped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from facestream.config import Settings
from facestream.io.kafka import (
    DAY_MS,
    MAX_REQUEST,
    TopicSpec,
    audit_topics,
    create_topics,
    delete_topics,
    read_topic,
)
from facestream.runtime.emit import Emitter
from facestream.runtime.stage import Outcome, Output, Record


@pytest.fixture
async def rig(kafka: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, AIOKafkaProducer]]:
    prefix = f"e{uuid.uuid4().hex[:8]}"
    settings = Settings(topic_prefix=prefix, data_dir=tmp_path)
    # `faces` takes at most 40 KB a message here, `dlq` 120 KB: small enough to overflow on purpose,
    # larger than a producer batch (16 KB), so an oversized record is refused in a batch of its own.
    await create_topics(
        settings,
        [
            TopicSpec(settings.topic("faces"), 1, 40_000, DAY_MS),
            TopicSpec(settings.topic("dlq"), 1, 120_000, DAY_MS),
            *audit_topics(settings),
        ],
    )
    # Configured as faust's producer is (acks=all, not idempotent: at-least-once processing).
    prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", max_request_size=MAX_REQUEST)
    await prod.start()
    yield settings, prod
    await prod.stop()
    await delete_topics(settings)


def _record(offset: int, value: bytes, key: bytes = b"img") -> Record:
    return Record(value, key, "x.images", 0, offset, {"trace-id": b"trace-1"})


def _face(image_id: str, padding: int) -> Output:
    return Output("faces", image_id, {"image_id": image_id, "trace_id": "trace-1", "padding": "p" * padding})


async def test_refused_outputs_become_dead_letters_alone(rig: tuple[Settings, AIOKafkaProducer]) -> None:
    settings, prod = rig

    async def send(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> Any:
        return await prod.send(settings.topic(topic), value, key=key, headers=list(headers.items()))

    records = [_record(0, b'{"ok": 1}'), _record(1, b"x" * 3000), _record(2, b'{"ok": 2}'), _record(3, b"y" * 100_000)]
    outcomes = [
        Outcome([_face("a", 10)]),
        Outcome([_face("b", 60_000)]),  # refused by the broker: over 40 KB
        Outcome([_face("c", 10)]),
        Outcome([_face("d", 60_000)]),  # refused; its record is 100 KB, its dead letter small all the same
    ]
    await Emitter("detector", send).emit(records, outcomes)
    faces = await read_topic(settings, settings.topic("faces"))
    letters = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("dlq"))]
    assert sorted(orjson.loads(r.value)["image_id"] for r in faces) == ["a", "c"]
    assert sorted((x["offset"], x["reason"]) for x in letters) == [(1, "output_rejected"), (3, "output_rejected")]
    for letter in letters:  # a reference to the record, never its value
        assert "payload_b64" not in letter
        assert letter["source_topic"] == "x.images"
        assert len(orjson.dumps(letter)) < 4000
    # Each refusal is also an audit entry, written with its dead letter.
    entries = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("audit.entries"))]
    assert sorted((e["action"], e["details"]["reason"]) for e in entries) == [("refusal", "output_rejected")] * 2


async def test_transient_failures_are_retried_not_skipped(rig: tuple[Settings, AIOKafkaProducer]) -> None:
    """The broker boundary fails twice for one message (as a broker restart would), then works:
    the emit returns only once the message is written. A fake send wraps the real producer only
    to inject those two failures."""
    settings, prod = rig
    failures = {"b": 2}

    async def flaky(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> Any:
        if key is not None and failures.get(key.decode(), 0) > 0:
            failures[key.decode()] -= 1
            raise KafkaConnectionError("broker away")
        return await prod.send(settings.topic(topic), value, key=key, headers=list(headers.items()))

    records = [_record(0, b"{}", b"a"), _record(1, b"{}", b"b")]
    outcomes = [Outcome([_face("a", 10)]), Outcome([_face("b", 10)])]
    await Emitter("detector", flaky, retry_initial_s=0.05).emit(records, outcomes)
    faces = sorted(orjson.loads(r.value)["image_id"] for r in await read_topic(settings, settings.topic("faces")))
    assert faces == ["a", "b"]  # each once: only the failed message was sent again
    assert failures == {"b": 0}
    assert await read_topic(settings, settings.topic("dlq")) == []
