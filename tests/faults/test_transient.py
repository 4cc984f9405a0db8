"""Failures that may pass are tried again; those that cannot, are not; and what ends in the dead
letters can be listed and sent through again once the cause is gone. Real broker, real worker,
a real image server on loopback whose answers the test scripts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from facestream import client
from facestream.io.kafka import admin_client, consumer, running
from facestream.ops.lag import consumer_lag
from tests.conftest import ROOT, SAMPLES, sample
from tests.harness import Pipeline
from tests.helpers import Server

PHOTO = sample("azure_family2_man").read_bytes()


class Script:
    """Answers per path: a list of statuses to give first, then 200 with the photo."""

    def __init__(self) -> None:
        self.plan: dict[str, list[int]] = {}
        self.hits: dict[str, int] = {}
        self.hold: dict[str, asyncio.Event] = {}  # paths that answer only once their event is set

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if request.path in self.hold:
            await self.hold[request.path].wait()
        plan = self.plan.get(request.path, [])
        if plan:
            return web.Response(status=plan.pop(0))
        return web.Response(body=PHOTO, content_type="image/jpeg")


@pytest.fixture
async def rig(kafka: str, tmp_path: Path) -> AsyncIterator[tuple[Pipeline, Script, Server]]:
    script = Script()
    async with Server({"/{name}": script.handle}) as server:
        pipeline = Pipeline(tmp_path, [SAMPLES], extra={"transient_retries": 2, "transient_backoff_s": 0.2})
        await pipeline.start()
        try:
            yield pipeline, script, server
        finally:
            await pipeline.stop()


def search(image_id: str, url: str) -> dict[str, object]:
    intent = client.search_intent("fault test", "CASE-T", "test-suite")
    return client.submission(image_id, {"uri": url, "sha256": hashlib.sha256(PHOTO).hexdigest()}, intent, "tests")


def cli(pipeline: Pipeline, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    result = subprocess.run(
        [sys.executable, "-m", "facestream.services", "--config", str(pipeline.config), "dlq", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_transient_failures_are_retried_and_replayable(rig: tuple[Pipeline, Script, Server]) -> None:
    pipeline, script, server = rig
    script.plan = {"/flaky.jpg": [503, 503], "/down.jpg": [503] * 3, "/missing.jpg": [404]}
    for name in ("flaky", "down", "missing"):
        await pipeline.submit(name, search(name, server.url(f"/{name}.jpg")))

    async def settled() -> bool:
        done = {m["image_id"] for m in await pipeline.events("matches")}
        letters = {orjson.loads(v)["image_id"] for _, v in await pipeline.read("dlq")}
        return "flaky" in done and {"down", "missing"} <= letters

    await pipeline.wait_for(settled, what="the flaky image through, the others dead-lettered")
    assert script.hits["/flaky.jpg"] == 3  # two 503s, then the photo: no dead letter for it
    assert script.hits["/down.jpg"] == 3  # the first try and two retries
    assert script.hits["/missing.jpg"] == 1  # a 404 will not pass: not tried again
    letters = {x["image_id"]: x for x in (orjson.loads(v) for _, v in await pipeline.read("dlq"))}
    assert set(letters) == {"down", "missing"}
    assert letters["down"]["transient"] is True
    assert letters["missing"]["transient"] is False
    assert letters["down"]["reason"] == letters["missing"]["reason"] == "fetch_failed"

    listed = cli(pipeline, "list", "--transient")
    assert "down" in listed
    assert "missing" not in listed
    assert "1 dead letters" in listed
    assert "would replay 1" in cli(pipeline, "replay", "--transient", "--dry-run")
    # The image server is back: the transient one goes through; the 404 is left where it is.
    assert "replayed 1 dead letters" in cli(pipeline, "replay", "--transient")

    async def replayed() -> bool:
        return any(m["image_id"] == "down" for m in await pipeline.events("matches"))

    await pipeline.wait_for(replayed, what="the replayed image")
    await asyncio.sleep(0.5)
    assert len(await pipeline.read("dlq")) == 2  # nothing new dead-lettered

    # Letters never hold the record itself: once its topic no longer does (transit retention,
    # here forced by deleting the records), there is nothing to replay, and the command says so.
    assert "would replay 2 dead letters" in cli(pipeline, "replay", "--dry-run")
    images = pipeline.settings.topic("images")
    async with running(admin_client(pipeline.settings)) as admin:
        parts = [TopicPartition(images, p) for p in range(pipeline.settings.partitions)]
        async with running(consumer(pipeline.settings)) as cons:
            ends = await cons.end_offsets(parts)
        await admin.delete_records({tp: RecordsToDelete(end) for tp, end in ends.items()})
    gone = cli(pipeline, "replay", "--dry-run")
    assert "would replay 0 dead letters" in gone
    assert "2 no longer held there" in gone


async def test_a_slow_source_holds_its_own_image_not_the_ones_behind_it(
    rig: tuple[Pipeline, Script, Server],
) -> None:
    """One image's server does not answer; six images published behind it, in the same partition,
    get their results meanwhile. The slow one holds only its partition's committed offset (a
    restart would redeliver it); once its server answers, it is done and the commits catch up."""
    pipeline, script, server = rig
    script.hold["/slow.jpg"] = release = asyncio.Event()
    topic = pipeline.settings.topic("images")

    async def publish(image_id: str) -> int:
        raw = orjson.dumps(search(image_id, server.url(f"/{image_id}.jpg")))
        meta = await pipeline.producer.send_and_wait(topic, raw, key=image_id.encode(), partition=0)
        return int(meta.offset)

    slow_offset = await publish("slow")
    await pipeline.wait_for(lambda: script.hits.get("/slow.jpg", 0) > 0, what="the slow fetch to start")
    fast = [f"fast-{i}" for i in range(6)]
    for image_id in fast:
        await publish(image_id)
        await asyncio.sleep(0.1)  # separate batches

    async def results() -> set[str]:
        return {m["image_id"] for m in await pipeline.events("matches")}

    async def fast_done() -> bool:
        return set(fast) <= await results()

    await pipeline.wait_for(fast_done, limit_s=60, what="the images behind the slow one")
    assert "slow" not in await results()
    assert not release.is_set()

    async def committed() -> int:
        rows = await consumer_lag(pipeline.settings, {pipeline.settings.app_id: [topic]})
        return next(r.committed for r in rows if r.topic == topic and r.partition == 0)

    await asyncio.sleep(pipeline.settings.session_timeout_s / 2)  # a commit interval or more
    assert await committed() <= slow_offset  # not past the image still in work

    release.set()

    async def all_committed() -> bool:
        return "slow" in await results() and await committed() == slow_offset + 1 + len(fast)

    await pipeline.wait_for(all_committed, limit_s=60, what="the slow image done and its partition committed")
