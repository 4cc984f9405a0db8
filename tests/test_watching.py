"""What operators read tells the truth: percentiles estimated from the histogram as Prometheus
does (not bucket bounds), lag apart from webhook retries that wait for their due time, `lag`
showing only what lags, and `tail -f` starting at the end. Real broker, no workers: the records
and offsets a pipeline would leave are written directly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from facestream.cli import summarise
from facestream.contracts.timeutil import iso
from facestream.io.kafka import connection
from facestream.ops.lag import consumer_lag
from facestream.ops.metrics import STAGE_SECONDS, histogram_quantile
from facestream.ops.server import Health, OpsServer, stage_status
from facestream.services.notifier.topics import retry_topics
from tests.conftest import SAMPLES
from tests.harness import Pipeline
from tests.test_cli import cli


def test_printed_events_hold_no_biometric_field_at_any_depth() -> None:
    submission = {"image_id": "i1", "image": {"kind": "inline", "data_b64": "AAAA"}, "intent": {"kind": "search"}}
    face = {"image_id": "i1", "faces": [{"aligned": "BBBB", "landmarks": [[1, 2]], "score": 0.9}]}
    assert summarise(submission) == {"image_id": "i1", "image": {"kind": "inline"}}
    assert summarise(face) == {"image_id": "i1", "faces": [{"score": 0.9}]}


def test_percentiles_are_interpolated_inside_the_bucket() -> None:
    # 40 events of 3 ms and 60 of 20 ms: the 50th falls in the 10-25 ms bucket, 10 of its 60 in.
    for seconds in [0.003] * 40 + [0.020] * 60:
        STAGE_SECONDS.labels("quantile-check").observe(seconds)
    shown = stage_status({"quantile-check": "nothing"})["quantile-check"]
    assert shown["p50_ms"] == pytest.approx(10 + 15 * 10 / 60, abs=0.01)  # 12.5 ms, not the bound 25
    assert shown["p99_ms"] == pytest.approx(10 + 15 * 59 / 60, abs=0.01)  # 24.75 ms
    assert shown["mean_ms"] == pytest.approx(13.2, abs=0.01)
    # Prometheus's rules at the edges: a rank in +Inf gives the last finite bound; no data, NaN.
    assert histogram_quantile(0.99, [(0.1, 1), (0.5, 1), (float("inf"), 10)]) == 0.5
    assert histogram_quantile(0.5, [(0.1, 0), (float("inf"), 0)]) != histogram_quantile(0.5, [])  # NaN != NaN
    assert stage_status({"never-ran": "nothing"})["never-ran"]["p99_ms"] == 0.0


async def _commit(pipeline: Pipeline, group: str, offsets: dict[TopicPartition, int]) -> None:
    member = AIOKafkaConsumer(**connection(pipeline.settings), group_id=group, enable_auto_commit=False)
    await member.start()
    try:
        member.assign(list(offsets))
        await member.commit(offsets)
    finally:
        await member.stop()


async def test_scheduled_retries_are_not_lag(kafka: str, tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, [SAMPLES], services=[])
    await pipeline.start()
    try:
        settings = pipeline.settings
        tier = next(iter(retry_topics(settings).values()))
        faces = settings.topic("faces")
        now = time.time()
        send = pipeline.producer.send_and_wait
        for i in range(3):  # waiting for their time (two minutes from now): scheduled
            await send(tier, orjson.dumps({"webhook_id": f"w{i}", "due_at": iso(now + 120 + i)}), partition=0)
        await send(tier, orjson.dumps({"webhook_id": "late", "due_at": iso(now - 60)}), partition=1)  # overdue,
        for i in range(2):  # and behind it two not due yet
            await send(tier, orjson.dumps({"webhook_id": f"v{i}", "due_at": iso(now + 300)}), partition=1)
        for _ in range(5):
            await send(faces, b"{}", partition=0)
        deliveries, embedder = f"{settings.app_id}-deliveries", f"{settings.app_id}-embedder"
        await _commit(pipeline, deliveries, {TopicPartition(tier, p): 0 for p in range(settings.partitions)})
        await _commit(pipeline, embedder, {TopicPartition(faces, p): 0 for p in range(settings.partitions)})
        groups = {deliveries: [tier], embedder: [faces]}

        rows = {(r.topic, r.partition): r for r in await consumer_lag(settings, groups, [tier])}
        waiting, overdue, behind = rows[(tier, 0)], rows[(tier, 1)], rows[(faces, 0)]
        assert (waiting.scheduled, waiting.lag, waiting.behind) == (True, 3, 0)
        assert waiting.due_at == pytest.approx(now + 120, abs=1)  # the first job's due time
        assert (overdue.lag, overdue.behind, overdue.waiting) == (3, 1, 2)  # an overdue retry is lag
        assert overdue.oldest_at == pytest.approx(now - 60, abs=1)  # it has waited since it fell due
        assert (behind.scheduled, behind.behind, behind.due_at) == (False, 5, None)
        assert behind.oldest_at == pytest.approx(now, abs=30)
        assert behind.age(time.time() + 100) >= 100
        assert rows[(faces, 1)].behind == 0 and rows[(faces, 1)].age(now) == 0  # noqa: PT018

        # The worker's gauges: the scheduled tier is no lag, its jobs and next due time apart.
        ops = OpsServer(settings, groups, {}, Health([]), [tier])
        await ops.refresh()
        sample = REGISTRY.get_sample_value
        assert sample("facestream_consumer_lag", {"group": deliveries, "topic": tier, "partition": "0"}) == 0
        assert sample("facestream_consumer_lag", {"group": deliveries, "topic": tier, "partition": "1"}) == 1
        assert sample("facestream_scheduled_retries", {"group": deliveries, "topic": tier}) == 5
        due = sample("facestream_scheduled_retry_next_due_timestamp_seconds", {"group": deliveries, "topic": tier})
        assert due == pytest.approx(now + 120, abs=1)
        age = sample("facestream_consumer_lag_seconds", {"group": embedder, "topic": faces, "partition": "0"})
        assert age is not None and 0 < age < 60  # noqa: PT018

        # `facestream lag`: only what lags, scheduled retries apart; `--all` every row.
        shown = await cli(pipeline.config, "lag")
        lines = shown.splitlines()
        assert any(faces in line and line.split()[2] == "0" and line.split()[5] == "5" for line in lines), shown
        assert any(tier in line and line.split()[2] == "1" for line in lines), shown
        assert not any(tier in line and line.split()[2] == "0" for line in lines if not line.startswith(" ")), shown
        assert any(tier in line and line.split()[2] == "1" and line.endswith("2 scheduled") for line in lines), shown
        assert not any(f"{faces} " in line and line.split()[2] == "1" for line in lines), shown  # not lagging
        [retries] = [line for line in lines if line.startswith("  ") and tier in line]
        assert "5 jobs" in retries and "next due" in retries and iso(waiting.due_at or 0)[:16] in retries  # noqa: PT018
        assert "scheduled webhook retries" in shown
        every = await cli(pipeline.config, "lag", "--all")
        assert any(f"{faces} " in line and line.split()[2] == "1" for line in every.splitlines()), every
        assert any(tier in line and line.split()[2] == "0" and "scheduled" in line for line in every.splitlines())
    finally:
        await pipeline.stop()


async def test_tail_follows_from_the_end(kafka: str, tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, [SAMPLES], services=[])
    await pipeline.start()
    try:
        matches = pipeline.settings.topic("matches")
        for i in range(12):  # history, across partitions
            await pipeline.producer.send_and_wait(matches, orjson.dumps({"image_id": f"old-{i}"}), partition=i % 2)
        ids = lambda text: [orjson.loads(line)["image_id"] for line in text.splitlines()]  # noqa: E731
        assert ids(await cli(pipeline.config, "tail")) == [f"old-{i}" for i in range(2, 12)]  # the last 10
        assert ids(await cli(pipeline.config, "tail", "--from-beginning")) == [f"old-{i}" for i in range(12)]

        async def follow(*args: str) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "facestream.services",
                "tail",
                "-f",
                *args,
                env={**os.environ, "FACESTREAM_CONFIG": str(pipeline.config)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )

        async def lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
            assert proc.stdout is not None
            return [orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 60))["image_id"] for _ in range(count)]

        followers = [await follow(), await follow("-n", "1")]
        try:
            for proc in followers:  # each says when it follows (what comes from then on is printed)
                assert proc.stderr is not None
                while b"following" not in await asyncio.wait_for(proc.stderr.readline(), 60):
                    pass
            assert await lines(followers[1], 1) == ["old-11"]  # -n 1: the last one first
            await pipeline.producer.send_and_wait(matches, orjson.dumps({"image_id": "new-1"}), partition=1)
            assert await lines(followers[0], 1) == ["new-1"]  # nothing of the history before it
            assert await lines(followers[1], 1) == ["new-1"]
        finally:
            for proc in followers:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                await proc.wait()
    finally:
        await pipeline.stop()
