"""A fault run: a real pipeline (broker, one or more worker processes in one group, verifying
receiver) takes a stream of searches while its workers or their model processes are killed with
SIGKILL, its receiver goes away for a while and the broker restarts; on clusters (three Kafka
nodes, three Qdrant peers), while a Kafka node or a Qdrant peer is SIGKILLed and comes back. Then
every submitted image and every match is accounted for, and every answer checked.
`tests/faults/test_kills.py` and `tests/test_cluster.py` run short ones in the suite,
`bench/faults.py` longer ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from devtools.kafka_nodes import KafkaNodes
from devtools.qdrant import QdrantCluster
from facestream import client
from facestream.contracts.timeutil import parse_iso
from facestream.ops.lag import consumer_lag
from facestream.runtime.app import consumer_groups
from facestream.runtime.service import runnable
from facestream.services.main import SERVICES
from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline
from tests.helpers import enrolment

GALLERY = sorted((SAMPLES / "gallery").rglob("*.jpg"))
PROBES = sorted((SAMPLES / "probes").rglob("*.jpg"))
NOT_ENROLLED = "azure_family1_son"  # no gallery photo: enrolled mid-run on clusters (a peer down)


@dataclass
class Clusters:
    """A Kafka cluster and a Qdrant cluster for the pipeline. The matcher reaches Qdrant through
    its first peer (a deployment puts a service address in front of all of them), so the peers
    killed are the others."""

    kafka: KafkaNodes
    qdrant: QdrantCluster

    def settings(self) -> dict[str, Any]:
        return {
            "kafka_bootstrap": self.kafka.bootstrap,
            "kafka_replication_factor": 3,
            "kafka_min_insync_replicas": 2,
            "gallery_backend": "qdrant",
            "qdrant_url": self.qdrant.url,
            "qdrant_shards": 3,
            "qdrant_replicas": 2,
        }


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
    workers: int = 1
    kills: int = 0
    model_kills: int = 0
    broker_restarts: int = 0
    node_kills: int = 0  # Kafka nodes SIGKILLed (clusters)
    searched_while_node_down: int = 0  # searches submitted while a Kafka node was down
    unanswered_while_node_down: int = 0  # of those, not answered before it came back (must be 0)
    peer_kills: int = 0  # Qdrant peers SIGKILLed (clusters)
    wrong_answers: int = 0  # a result whose top candidate is not the probe's subject, or no match for one enrolled
    late_enrolled: bool = False  # enrolled while a Qdrant peer was down, and found by later searches
    rejoined: bool = False  # every killed peer back, every shard replica active again
    lag: int = -1  # the pipeline group's lag on its topics at the end (must drain to 0)
    recovery_s: list[tuple[str, float]] = field(default_factory=list)  # fault, seconds to the next result
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
            ("workers in the group", self.workers),
            ("worker kills (SIGKILL)", self.kills),
            ("model process kills (SIGKILL)", self.model_kills),
            ("broker restarts", self.broker_restarts),
            ("Kafka nodes SIGKILLed (of 3)", self.node_kills),
            ("  searches submitted while it was down", self.searched_while_node_down),
            ("  of those unanswered until it came back", self.unanswered_while_node_down),
            ("Qdrant peers SIGKILLed (of 3)", self.peer_kills),
            ("wrong answers (must be 0)", self.wrong_answers),
            ("lag at the end (must be 0)", self.lag),
            ("next result after each fault, s", ", ".join(f"{a} {s:.1f}" for a, s in self.recovery_s)),
            ("run time, s", f"{self.seconds:.1f}"),
        ]
        return "\n".join(f"{name:42s} {value}" for name, value in rows)


def _search(image_id: str, path: Path, settings: Any) -> dict[str, Any]:
    intent = client.search_intent("fault run", "CASE-FAULTS", "fault-run")
    return client.submission(image_id, client.image_ref(path, settings), intent, "faults")


def _broker(action: str) -> None:
    subprocess.check_call(["bash", str(ROOT / "scripts/kafka.sh"), action], stdout=subprocess.DEVNULL)


NODE_DOWN_S = 8.0  # a node killed stays down this long, and
NODE_ANSWER_S = 30.0  # at most this long more, until what was submitted meanwhile is answered
LATE_ENROLMENT = sorted((SAMPLES / "probes" / NOT_ENROLLED).glob("*.jpg"))[0]


def _top(result: dict[str, Any]) -> str | None:
    return str(result["candidates"][0]["subject_id"]) if result.get("candidates") else None


def _wrong_answers(results: list[dict[str, Any]], ids: list[str]) -> int:
    """Results whose top candidate is not the probe's subject, and enrolled subjects' probes that
    found no one (the subject not enrolled at first may be found once enrolled late)."""
    subject = {image_id: PROBES[i % len(PROBES)].parent.name for i, image_id in enumerate(ids)}
    wrong = 0
    for m in results:
        expected = subject.get(m["image_id"])
        if expected is None:
            continue
        top = _top(m)
        wrong += (top is not None and top != expected) or (top is None and expected != NOT_ENROLLED)
    return wrong


async def _rejoined(clusters: Clusters, collection: str, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(clusters.qdrant.replicas_active, collection):
            return True
        await asyncio.sleep(0.5)
    return False


async def _drained(pipeline: Pipeline, limit_s: float) -> int:
    """The lag of the pipeline's agent groups (one per worker composition) on the topics they read
    once it has drained, or what is left at `limit_s`."""
    settings = pipeline.settings
    groups: dict[str, list[str]] = {}
    for names in {tuple(group) for group in pipeline.services}:
        chosen = [s for s in SERVICES if s.name in names] if names else runnable(SERVICES)
        agents, topics = next(iter(consumer_groups(settings, chosen, SERVICES).items()))
        groups[agents] = topics
    deadline = time.monotonic() + limit_s
    while True:
        left = sum(row.lag for row in await consumer_lag(settings, groups))
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(1.0)


async def _results(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [m for m in await pipeline.events("matches") if m["status"] != "enrolled"]


def proc_parents() -> dict[int, int]:
    """Every live process's parent, from /proc: {pid: parent pid}."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return parents


def _model_process(pipeline: Pipeline, rng: random.Random) -> int | None:
    """A model process of a live worker, chosen at random (None if none is up just now)."""
    workers = {w.pid for w in pipeline.workers}
    found = []
    for pid, parent in proc_parents().items():
        try:
            if parent in workers and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return rng.choice(found) if found else None


async def fault_run(
    workdir: Path,
    images: int,
    kills: int,
    receiver_down_s: float = 0.0,
    broker_restart: bool = False,
    seed: int = 7,
    limit_s: float = 600,
    rate: float = 10.0,
    workers: int = 1,
    model_kills: int = 0,
    clusters: Clusters | None = None,
    node_kills: int = 0,
    peer_kills: int = 0,
) -> Counts:
    """`kills` SIGKILLs, `model_kills` SIGKILLs of a model process, a broker restart and a
    receiver outage, each at a random moment of a stream of `images` searches sent at `rate` per
    second. With one worker (all four services), a kill kills it; with `workers` > 1, that many
    workers share the detector and embedder group (the matcher and notifier run in one more: the
    embedded gallery is one process's) and a kill kills one of these workers, brought back once
    the others have taken its partitions over. On `clusters`, `node_kills` Kafka nodes (one at a
    time, back after a few seconds) and `peer_kills` Qdrant peers (back once an enrolment made
    while it was down has been applied) are SIGKILLed too."""
    rng = random.Random(seed)
    started = time.monotonic()
    # Retries doubling from 1 s until they span the receiver's absence and 10 s more: a receiver
    # away gets every webhook late, not never (production schedules span days).
    schedule = [0.0, 1.0]
    while sum(schedule) < receiver_down_s + 10:
        schedule.append(schedule[-1] * 2)
    extra: dict[str, Any] = {"transient_backoff_s": 0.5, "webhook_schedule_s": schedule}
    if clusters is not None:
        extra.update(clusters.settings())
    scaled = ("detector", "embedder")
    services = [()] if workers == 1 else [scaled] * workers + [("matcher", "notifier")]
    pipeline = Pipeline(workdir, [SAMPLES], services=services, extra=extra)
    await pipeline.start()
    counts = Counts(workers=workers)
    try:
        for i, path in enumerate(GALLERY):
            await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, pipeline.settings, "faults"))

        async def enrolled() -> bool:
            return sum(m["status"] == "enrolled" for m in await pipeline.events("matches")) >= len(GALLERY)

        await pipeline.wait_for(enrolled, limit_s=limit_s, what="the gallery")
        ids = [f"probe-{i:05d}" for i in range(images)]

        submitted_at: dict[str, float] = {}

        async def feed() -> None:  # a steady stream, so that every fault lands mid-stream
            for i, image_id in enumerate(ids):
                await pipeline.submit(image_id, _search(image_id, PROBES[i % len(PROBES)], pipeline.settings))
                submitted_at[image_id] = time.monotonic()
                await asyncio.sleep(1 / rate)

        feeder = asyncio.create_task(feed())
        counts.submitted = len(ids)
        actions = ["kill"] * kills + ["model"] * model_kills
        actions += ["broker"] * broker_restart + ["receiver"] * (receiver_down_s > 0)
        actions += ["node"] * node_kills + ["peer"] * peer_kills
        rng.shuffle(actions)
        for action in actions:
            await asyncio.sleep(rng.uniform(0.5, images / rate / (len(actions) + 1)))  # a random moment mid-stream
            if action == "kill" and workers > 1:
                slot = rng.randrange(len(services))  # any worker: one of the group, or the matcher's
                pipeline.kill_slot(slot)
                counts.kills += 1
                await asyncio.sleep(pipeline.settings.session_timeout_s)  # the others take its partitions over
                pipeline.spawn_slot(slot)
            elif action == "kill":
                pipeline.kill_workers()
                counts.kills += 1
                pipeline.spawn_workers()
            elif action == "model":
                for _ in range(50):
                    pid = _model_process(pipeline, rng)
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        counts.model_kills += 1
                        break
                    await asyncio.sleep(0.2)
            elif action == "node" and clusters is not None:
                node = rng.randrange(1, clusters.kafka.size + 1)
                clusters.kafka.kill_node(node)
                killed_at = time.monotonic()
                counts.node_kills += 1
                await asyncio.sleep(NODE_DOWN_S)
                # The other nodes lead its partitions now: what was submitted while it is down is
                # answered before it comes back (with one replica per partition it would wait).
                during = [i for i, at in submitted_at.items() if at > killed_at]
                counts.searched_while_node_down += len(during)

                async def answered(these: list[str] = during) -> bool:
                    return set(these) <= {m["image_id"] for m in await _results(pipeline)}

                with contextlib.suppress(AssertionError):
                    await pipeline.wait_for(answered, limit_s=NODE_ANSWER_S, what="searches while a node is down")
                done = {m["image_id"] for m in await _results(pipeline)}
                counts.unanswered_while_node_down += len(set(during) - done)
                await asyncio.to_thread(clusters.kafka.start_node, node)
            elif action == "peer" and clusters is not None:
                index = rng.randrange(1, len(clusters.qdrant.peers))
                clusters.qdrant.peers[index].kill()
                counts.peer_kills += 1
                late = f"enrol-late-{counts.peer_kills}"
                await pipeline.submit(late, enrolment(late, LATE_ENROLMENT, pipeline.settings, "faults"))

                async def applied(image_id: str = late) -> bool:
                    return any(m["image_id"] == image_id for m in await pipeline.events("matches"))

                await pipeline.wait_for(applied, limit_s=limit_s, what="an enrolment while a Qdrant peer is down")
                await asyncio.to_thread(clusters.qdrant.restart, index)
            elif action == "broker":
                for step in ("down", "up"):
                    await asyncio.to_thread(_broker, step)
                counts.broker_restarts += 1
            else:
                await pipeline.receiver.stop()
                await asyncio.sleep(receiver_down_s)
                await pipeline.receiver.start()  # the same port: the retries find it again
            after = time.time()

            async def recovered(since: float = after) -> bool:
                results = await _results(pipeline)
                if len({m["image_id"] for m in results}) >= len(ids):
                    return True  # nothing left to do
                return any(parse_iso(m["occurred_at"]).timestamp() > since for m in results)

            await pipeline.wait_for(recovered, limit_s=limit_s, what=f"the first result after: {action}")
            counts.recovery_s.append((action, time.time() - after))
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
        counts.wrong_answers = _wrong_answers(results, ids)
        late_results = [m for m in await pipeline.events("matches") if m["image_id"].startswith("enrol-late-")]
        counts.late_enrolled = bool(late_results) and all(m["status"] == "enrolled" for m in late_results)
        counts.late_enrolled &= any(_top(m) == NOT_ENROLLED for m in results)
        if clusters is not None:
            counts.rejoined = await _rejoined(clusters, pipeline.settings.gallery_name, limit_s)
        counts.lag = await _drained(pipeline, limit_s)
    finally:
        await pipeline.stop()
    counts.seconds = time.monotonic() - started
    return counts
