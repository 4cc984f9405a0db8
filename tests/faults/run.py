"""A fault run: a real pipeline (broker, worker process, verifying receiver) takes a stream of
searches while its worker is killed with SIGKILL, its receiver goes away for a while and,
optionally, the broker restarts; then every submitted image and every match is accounted for.
`tests/faults/test_kills.py` runs a short one in the suite, `bench/faults.py` longer ones."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from facestream import client
from facestream.contracts.timeutil import parse_iso
from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline
from tests.helpers import enrolment

GALLERY = sorted((SAMPLES / "gallery").rglob("*.jpg"))
PROBES = sorted((SAMPLES / "probes").rglob("*.jpg"))


@dataclass
class Counts:
    submitted: int = 0
    results: int = 0  # images with a result (match, no_match, no_face) on `matches`
    dead_letters: int = 0  # images dead-lettered instead
    lost_images: int = 0  # neither: must be 0
    expected_webhooks: int = 0  # distinct matches made
    delivered: int = 0  # distinct webhook ids the receiver verified
    lost_webhooks: int = 0  # must be 0
    duplicates: int = 0  # requests for a webhook id already received (retries after a kill)
    gallery_sizes: set[int] = field(default_factory=set)  # as matches report it: one value, no doubles
    kills: int = 0
    recovery_s: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            ("images submitted", self.submitted),
            ("  with a result", self.results),
            ("  dead-lettered", self.dead_letters),
            ("  lost (must be 0)", self.lost_images),
            ("matches made (expected webhooks)", self.expected_webhooks),
            ("  delivered, distinct webhook ids", self.delivered),
            ("  lost (must be 0)", self.lost_webhooks),
            ("  requests for an id already received", self.duplicates),
            ("gallery size seen in matches", ", ".join(map(str, sorted(self.gallery_sizes)))),
            ("worker kills (SIGKILL)", self.kills),
            ("first result after a restart, s", ", ".join(f"{s:.1f}" for s in self.recovery_s)),
            ("run time, s", f"{self.seconds:.1f}"),
        ]
        return "\n".join(f"{name:42s} {value}" for name, value in rows)


def _search(image_id: str, path: Path, settings: Any) -> dict[str, Any]:
    intent = client.search_intent("fault run", "CASE-FAULTS", "fault-run")
    return client.submission(image_id, client.image_ref(path, settings), intent, "faults")


def _broker(action: str) -> None:
    subprocess.check_call(["bash", str(ROOT / "scripts/kafka.sh"), action], stdout=subprocess.DEVNULL)


async def _results(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [m for m in await pipeline.events("matches") if m["status"] != "enrolled"]


async def fault_run(
    workdir: Path,
    images: int,
    kills: int,
    receiver_down_s: float = 0.0,
    broker_restart: bool = False,
    seed: int = 7,
    limit_s: float = 600,
    rate: float = 10.0,
) -> Counts:
    rng = random.Random(seed)
    started = time.monotonic()
    # Retries spread over 15 s: a receiver away for less than that gets every webhook late, not never.
    extra = {"transient_backoff_s": 0.5, "webhook_schedule_s": [0, 1, 2, 4, 8]}
    pipeline = Pipeline(workdir, [SAMPLES], extra=extra)
    await pipeline.start()
    counts = Counts()
    try:
        for i, path in enumerate(GALLERY):
            await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, pipeline.settings, "faults"))

        async def enrolled() -> bool:
            return sum(m["status"] == "enrolled" for m in await pipeline.events("matches")) >= len(GALLERY)

        await pipeline.wait_for(enrolled, limit_s=limit_s, what="the gallery")
        ids = [f"probe-{i:05d}" for i in range(images)]

        async def feed() -> None:  # a steady stream, so that every fault lands mid-stream
            for i, image_id in enumerate(ids):
                await pipeline.submit(image_id, _search(image_id, PROBES[i % len(PROBES)], pipeline.settings))
                await asyncio.sleep(1 / rate)

        feeder = asyncio.create_task(feed())
        counts.submitted = len(ids)
        receiver_down_at = rng.randrange(kills + 1) if receiver_down_s else -1
        for k in range(kills + 1):
            if k == receiver_down_at:
                await pipeline.receiver.stop()
                await asyncio.sleep(receiver_down_s)
                await pipeline.receiver.start()  # the same port: the retries find it again
            if k == kills:
                break
            await asyncio.sleep(rng.uniform(0.5, images / rate / (kills + 1)))  # a random moment mid-stream
            pipeline.kill_workers()
            counts.kills += 1
            if broker_restart and k == 0:
                for action in ("down", "up"):
                    await asyncio.to_thread(_broker, action)
            respawned = time.time()
            pipeline.spawn_workers()

            async def recovered(since: float = respawned) -> bool:
                results = await _results(pipeline)
                if len({m["image_id"] for m in results}) >= len(ids):
                    return True  # nothing left to do for the new worker
                return any(parse_iso(m["occurred_at"]).timestamp() > since for m in results)

            await pipeline.wait_for(recovered, limit_s=limit_s, what="the first result after the kill")
            counts.recovery_s.append(time.time() - respawned)
        await feeder

        async def accounted() -> bool:
            done = {m["image_id"] for m in await _results(pipeline)}
            dead = {orjson.loads(v)["image_id"] for _, v in await pipeline.read("dlq")}
            if not set(ids) <= done | dead:
                return False
            made = {m["event_id"] for m in await _results(pipeline) if m["status"] == "match"}
            return len({d.webhook_id for d in pipeline.receiver.deliveries}) >= len(made)

        await pipeline.wait_for(accounted, limit_s=limit_s, what="every image and every match accounted for")
        await asyncio.sleep(2.0)  # late redeliveries, if any, show up as duplicates
        results = await _results(pipeline)
        done = {m["image_id"] for m in results}
        dead = {orjson.loads(v)["image_id"] for _, v in await pipeline.read("dlq")}
        made = {m["event_id"] for m in results if m["status"] == "match"}
        delivered = {d.webhook_id for d in pipeline.receiver.deliveries}
        counts.results = len(done & set(ids))
        counts.dead_letters = len((dead - done) & set(ids))
        counts.lost_images = len(set(ids) - done - dead)
        counts.expected_webhooks = len(made)
        counts.delivered = len(delivered)
        counts.lost_webhooks = len({f"msg_{e.replace('-', '')}" for e in made} - delivered)
        counts.duplicates = pipeline.receiver.duplicates
        counts.gallery_sizes = {m["gallery"]["size"] for m in results if m["status"] == "match"}
    finally:
        await pipeline.stop()
    counts.seconds = time.monotonic() - started
    return counts
