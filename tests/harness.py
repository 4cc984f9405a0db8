"""A pipeline on the real local Kafka for end-to-end tests: unique topics, a worker process
(`facestream run`), a verifying webhook receiver, and helpers to submit and to read topics."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition

from devtools.ports import free_port
from devtools.receiver import WebhookReceiver
from devtools.workers import spawn, terminate
from facestream.config import Settings, load_settings, to_toml
from facestream.io.kafka import consumer, delete_topics, producer
from facestream.services.main import ensure_topics
from facestream.services.notifier.subscriptions import new_secret

ROOT = Path(__file__).resolve().parent.parent


class Pipeline:
    def __init__(
        self,
        workdir: Path,
        roots: Sequence[Path],
        services: Sequence[Sequence[str]] = ((),),
        extra: dict[str, Any] | None = None,
        admin: dict[str, Any] | None = None,
        prepare: Callable[[Pipeline], Awaitable[None]] | None = None,
        slot_env: dict[int, dict[str, str]] | None = None,
    ) -> None:
        self.slot_env = slot_env or {}  # environment of worker `slot` (of `services`): its own principal
        self.prepare = prepare  # run once the topics exist, before the workers start (ACLs)
        self.extra = extra or {}
        self.admin = admin  # settings of an administrator (secured clusters): makes and removes the topics
        self.workdir = workdir
        self.roots = roots
        self.services = services
        self.secret = new_secret()
        self.receiver = WebhookReceiver(self.secret)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.ops_ports: dict[str, int] = {}
        self.api_ports: dict[str, int] = {}
        self.other_ports: dict[str, int] = {}  # crop servers of the second and later notifier workers
        self.slots: dict[int, subprocess.Popen[bytes]] = {}  # the workers of `services`, by position
        self.log_of: dict[int, Path] = {}  # each worker's log file, by pid
        self.crops_port = free_port()  # crop links point here (one notifier worker per pipeline)
        self.settings: Settings

    async def start(self) -> None:
        await self.receiver.start()
        prefix = f"t{uuid.uuid4().hex[:10]}"
        config = self.workdir / "facestream.toml"
        config.write_text(
            to_toml(
                {
                    "topic_prefix": prefix,
                    # The broker these tests use, also for commands run with this file alone.
                    "kafka_bootstrap": load_settings().kafka_bootstrap,
                    "app_id": prefix,
                    "data_dir": str(self.workdir / "state"),
                    "image_roots": [str(r) for r in self.roots],
                    "fetch_allow_private": ["127.0.0.1"],
                    "webhook_allow_private": ["127.0.0.1"],
                    "webhook_schedule_s": [0, 0.2, 0.5, 1],
                    "session_timeout_s": 6,
                    **self.extra,
                },
                [{"name": "test-receiver", "url": self.receiver.url, "secret": self.secret, "all_watchlists": True}],
            )
        )
        self.settings = load_settings(config)
        self.admin_settings = load_settings(config, **self.admin) if self.admin else self.settings
        await ensure_topics(self.admin_settings)
        if self.prepare is not None:
            await self.prepare(self)
        self.config = config
        self.spawn_workers()
        self.producer = producer(self.settings)
        await self.producer.start()

    def spawn_workers(self) -> None:
        for slot in range(len(self.services)):
            self.spawn_slot(slot)

    def _key(self, slot: int) -> str:
        """The name of worker `slot`'s ports and logs: its services, and its number among the
        workers that run the same services (from the second on)."""
        group = self.services[slot]
        key = "-".join(group) or "all"
        twin = [i for i, g in enumerate(self.services) if tuple(g) == tuple(group)].index(slot)
        return key if twin == 0 else f"{key}-{twin + 1}"

    def spawn_slot(self, slot: int) -> subprocess.Popen[bytes]:
        """Start worker `slot` (of `services`) again, with the same ports as before."""
        key = self._key(slot)
        worker = self._spawn(
            self.services[slot], key, twin=key.rsplit("-", 1)[-1].isdigit(), env=self.slot_env.get(slot)
        )
        self.slots[slot] = worker
        return worker

    def spawn_worker(self, group: Sequence[str]) -> subprocess.Popen[bytes]:
        """One worker for `group` (empty: all four), with its own operations port."""
        return self._spawn(group, "-".join(group) or "all")

    def _spawn(
        self, group: Sequence[str], key: str, twin: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        port = self.ops_ports.setdefault(key, free_port())
        # One crop server per notifier worker: the first serves the links the tests follow.
        crops = self.other_ports.setdefault(key, free_port()) if twin else self.crops_port
        log = self.workdir / f"worker-{key}-{len(list(self.workdir.glob('worker-*.log')))}.log"  # one per process
        api = self.api_ports.setdefault(key, free_port())
        ports = {"FACESTREAM_OPS_PORT": str(port), "FACESTREAM_CROPS_PORT": str(crops), "FACESTREAM_API_PORT": str(api)}
        worker = spawn(self.config, group, log, env={**ports, **(env or {})})
        self.workers.append(worker)
        self.log_of[worker.pid] = log
        return worker

    def kill_workers(self) -> None:
        """SIGKILL: no graceful shutdown, no final commit (a crash)."""
        for worker in self.workers:
            worker.kill()
            worker.wait()
        self.workers.clear()
        self.slots.clear()

    def kill_slot(self, slot: int) -> None:
        """SIGKILL worker `slot` alone: the others of its group take its partitions over."""
        worker = self.slots.pop(slot)
        worker.kill()
        worker.wait()
        self.workers.remove(worker)

    def stop_slot(self, slot: int) -> None:
        """Stop worker `slot` gracefully (SIGTERM: it finishes its work and commits)."""
        worker = self.slots.pop(slot)
        terminate([worker])
        self.workers.remove(worker)

    async def stop(self) -> None:
        await self.producer.stop()
        terminate(self.workers)
        await self.receiver.stop()
        await delete_topics(self.admin_settings)

    def logs(self, limit: int | None = 4000) -> str:
        """The workers' logs (the last `limit` characters of each; all with None)."""
        texts = [p.read_text(errors="replace") for p in sorted(self.workdir.glob("worker-*.log"))]
        return "\n".join(t if limit is None else t[-limit:] for t in texts)

    async def submit(self, key: str, value: dict[str, Any] | bytes) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        await self.producer.send_and_wait(self.settings.topic("images"), raw, key=key.encode())

    async def read(self, topic: str) -> list[tuple[str | None, bytes]]:
        """Every record now in `topic`, from the beginning to the current end offsets."""
        cons = consumer(self.settings, topic)
        await cons.start()
        try:
            parts = [
                TopicPartition(self.settings.topic(topic), p)
                for p in cons.partitions_for_topic(self.settings.topic(topic)) or ()
            ]
            ends = await cons.end_offsets(parts)
            out: list[tuple[str | None, bytes]] = []
            remaining = {tp for tp, end in ends.items() if end > 0}
            while remaining:
                batch = await cons.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset < ends[tp]:
                            out.append((r.key.decode(errors="replace") if r.key else None, r.value))
                        if r.offset >= ends[tp] - 1:
                            remaining.discard(tp)
            return out
        finally:
            await cons.stop()

    async def wait_for(self, done: Callable[[], bool | Awaitable[bool]], limit_s: float = 180, what: str = "") -> None:
        """Poll `done` (sync or async) until true; fail with the workers' logs on a dead worker or time-out."""
        deadline = time.monotonic() + limit_s
        while True:
            result = done()
            if result if isinstance(result, bool) else await result:
                return
            for worker in self.workers:
                if worker.poll() is not None:
                    raise AssertionError(f"worker exited {worker.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            await asyncio.sleep(0.3)

    async def events(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v) for _, v in await self.read(topic)]


def held(folder: Path) -> bool:
    """Whether a worker holds this replica directory (its lock is taken)."""
    fd = os.open(folder / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def log_lines(pipeline: Pipeline, worker: subprocess.Popen[bytes], event: str) -> list[dict[str, Any]]:
    lines = pipeline.log_of[worker.pid].read_text(errors="replace").splitlines()
    return [orjson.loads(line) for line in lines if f'"{event}' in line]


def searched_by(pipeline: Pipeline, worker: subprocess.Popen[bytes]) -> set[str]:
    """Image ids the worker's log says it searched."""
    return {line["image_id"] for line in log_lines(pipeline, worker, "searched")}


async def ready(pipeline: Pipeline, worker: subprocess.Popen[bytes]) -> None:
    """Wait until the replica has caught up and the group has given it partitions again."""
    await pipeline.wait_for(
        lambda: bool(log_lines(pipeline, worker, "gallery_replica_ready")), what="the replica to catch up"
    )
    source = pipeline.settings.topic("embeddings")

    def serving() -> bool:
        assignments = log_lines(pipeline, worker, "partitions_assigned")
        return bool(assignments) and any(p.startswith(f"{source}/") for p in assignments[-1]["partitions"])

    await pipeline.wait_for(serving, what="the group to give the replica partitions")
