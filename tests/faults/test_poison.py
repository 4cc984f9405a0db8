"""Poison records: whatever a publisher puts in a record (no value, a huge binary key, a huge
header, oversized fields), that record ends as a dead letter with its reason, bounded in size,
and its batch-mates are processed as if it were not there. Real broker, real worker process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from facestream import client, contracts
from tests.conftest import SAMPLES
from tests.harness import Pipeline

PROBES = sorted((SAMPLES / "probes").rglob("*.jpg"))


def search(image_id: str, path: Path, pipeline: Pipeline) -> dict[str, Any]:
    intent = client.search_intent("fault test", "CASE-FAULT", "test-suite")
    return client.submission(image_id, client.image_ref(path, pipeline.settings), intent, "tests")


@pytest.fixture
async def pipeline(kafka: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    p = Pipeline(tmp_path, [SAMPLES])
    await p.start()
    yield p
    await p.stop()


async def test_poison_records_take_nothing_with_them(pipeline: Pipeline) -> None:
    topic = pipeline.settings.topic("images")
    controls = {f"ctl-{i:02d}": PROBES[i % len(PROBES)] for i in range(20)}
    huge_watchlist = search("poison-fields", PROBES[0], pipeline)
    huge_watchlist["intent"]["watchlists"] = ["w" * 1_500_000]
    poison: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (b"poison-null", None, []),  # a tombstone
        (bytes(range(256)) * 6000, orjson.dumps(search("poison-key", PROBES[0], pipeline)), []),  # 1.5 MB binary key
        (b"poison-header", orjson.dumps(search("poison-header", PROBES[0], pipeline)), [("trace-id", b"t" * 600_000)]),
        # 65 characters: passed the detector once and failed at the embedder, after work was spent.
        (b"poison-trace", orjson.dumps(search("poison-trace", PROBES[0], pipeline)), [("trace-id", b"t" * 65)]),
        (b"poison-fields", orjson.dumps(huge_watchlist), []),
        (b"poison-json", b"\xff\xfe not json", []),
    ]
    # All at once, before the worker consumes: they share its first batches.
    futures = [
        await pipeline.producer.send(topic, orjson.dumps(search(k, p, pipeline)), key=k.encode())
        for k, p in controls.items()
    ]
    futures += [await pipeline.producer.send(topic, value, key=key, headers=headers) for key, value, headers in poison]
    await asyncio.gather(*futures)

    async def settled() -> bool:
        done = {m["image_id"] for m in await pipeline.events("matches")}
        return set(controls) <= done and len(await pipeline.read("dlq")) >= len(poison)

    await pipeline.wait_for(settled, what="every control processed and every poison record dead-lettered")
    letters = [orjson.loads(v) for _, v in await pipeline.read("dlq")]
    for letter in letters:
        assert not contracts.reference_errors("dead.letter", letter), letter["reason"]
        assert letter["stage"] == "detector"
        assert letter["reason"] == "malformed_event"
        assert len(orjson.dumps(letter)) < 3_000_000  # bounded: no 1.5 MB key or header copied in
    details = sorted(letter["detail"] for letter in letters)
    assert any("tombstone" in d for d in details)
    assert any("record key is 1536000 bytes" in d for d in details)
    assert any("record headers are 600008 bytes" in d for d in details)
    assert any("trace-id header must be 1 to 64" in d for d in details)
    assert any("watchlists" in d for d in details)
    assert any("not JSON" in d for d in details)
    # No letter carries the record's value (a photo, in general): they name where it is.
    [fields] = [x for x in letters if "watchlists" in x["detail"]]
    assert "payload_b64" not in fields
    assert fields["source_topic"] == topic
    assert all(w.poll() is None for w in pipeline.workers), "the worker keeps running"
    assert len(letters) == len(poison), "each poison record once, nothing else"
