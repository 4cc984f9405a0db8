"""Gallery figures on the local broker: how long a matcher replica takes to build its index from
the gallery topic (the embedded engine, an empty disk), search latency on the built index, alone
and while another replica (another process) builds its own index from the topic, and erasure
latency from request to signed receipt, which waits for both live replicas' acknowledgements.
Synthetic unit vectors stand in for embeddings; every record is encrypted with its subject's data
key, as the matcher writes them.

    .venv/bin/python bench/gallery.py [--points 100000] [--per-subject 2] [--erasures 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from _broker import on_local_broker
from _help import Help
from cryptography.fernet import Fernet
from pydantic import SecretStr

from facestream import contracts
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso
from facestream.io.kafka import create_topics, delete_topics, producer, running
from facestream.services.matcher.eraser import Eraser
from facestream.services.matcher.gallery import EdgeGallery
from facestream.services.matcher.keys import KeyRing, gallery_keys
from facestream.services.matcher.replica import Replica
from facestream.services.matcher.service import SERVICE
from facestream.services.matcher.stage import EMBEDDING_DIM


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


async def _write(settings: Settings, ring: KeyRing, points: int, per_subject: int) -> tuple[float, list[str]]:
    rng = np.random.default_rng(7)
    subjects = [f"subject-{i:06d}" for i in range(points // per_subject)]
    started = time.perf_counter()
    async with running(producer(settings, linger_ms=20)) as prod:
        pending = []
        for subject in subjects:
            key_id, key_record = ring.key_for(subject)
            assert key_record is not None
            key_name = f"{subject}/{key_id}".encode()
            pending.append(await prod.send(settings.topic("gallery.keys"), contracts.dumps(key_record), key=key_name))
            for n in range(per_subject):
                vector = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
                vector /= np.linalg.norm(vector)
                point_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{subject}/{n}"))
                record = {
                    "schema_version": 1,
                    "event_type": "gallery.point",
                    "point_id": point_id,
                    "subject_id": subject,
                    "watchlist": "bench",
                    "image_id": f"{subject}-{n}",
                    "image_sha256": "0" * 64,
                    "face_index": 0,
                    "model": {"name": "sface", "version": "2021dec"},
                    "consent": {
                        "lawful_basis": "explicit_consent",
                        "consent_ref": "bench",
                        "retain_until": "2027-12-31",
                        "source_attestation": "synthetic",
                        "enrolled_by": "bench",
                    },
                    "source": "bench",
                    "embedding_enc": {"key_id": key_id, "token": ring.encrypt(key_id, vector.tolist())},
                    "enrolled_at": now_iso(),
                }
                value = contracts.dumps(record)
                pending.append(await prod.send(settings.topic("gallery"), value, key=point_id.encode()))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    return time.perf_counter() - started, subjects


def _settings(prefix: str, workdir: Path, key: str) -> Settings:
    return Settings(topic_prefix=prefix, app_id=prefix, data_dir=workdir, gallery_keys=SecretStr(key))


async def _search_times(replica: Replica, rng: np.random.Generator, until: asyncio.Future[object] | int) -> list[float]:
    """Search latencies: `until` queries, or queries until the future is done."""
    seconds = []
    while (len(seconds) < until) if isinstance(until, int) else not until.done():
        query = rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        t0 = time.perf_counter()
        await replica.gallery.search([query.tolist()], 20, -1.0)
        seconds.append(time.perf_counter() - t0)
        await asyncio.sleep(0)
    return seconds


async def _other_replica(prefix: str, workdir: Path, key: str) -> tuple[asyncio.subprocess.Process, float]:
    """Start another replica in its own process on an empty folder; returns once it has built
    its index, with the seconds it took (it goes on following the topic until stopped)."""
    env = {**os.environ, "BENCH_GALLERY_KEY": key}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--replica", prefix, str(workdir), stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    while line := (await proc.stdout.readline()).decode():  # its log lines come first
        if line.startswith("built "):
            return proc, float(line.split()[1])
    raise RuntimeError(f"the other replica ended before it had built its index (exit {await proc.wait()})")


async def replica_process(prefix: str, workdir: Path) -> None:
    """The other replica: build, say so, follow until SIGTERM."""
    settings = _settings(prefix, workdir, os.environ["BENCH_GALLERY_KEY"])
    folder = workdir / "replica-1"
    folder.mkdir()
    replica = Replica(
        settings, EdgeGallery(folder / "index", EMBEDDING_DIM), folder, KeyRing(gallery_keys(settings).wrapper)
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.perf_counter()
    await replica.start()
    print(f"built {time.perf_counter() - started:.3f}", flush=True)
    await stop.wait()
    await replica.stop()


async def bench(workdir: Path, points: int, per_subject: int, erasures: int) -> list[str]:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    key = Fernet.generate_key().decode()
    settings = _settings(prefix, workdir, key)
    await create_topics(settings, SERVICE.topics(settings))
    lines = []
    other: asyncio.subprocess.Process | None = None
    try:
        ring = KeyRing(gallery_keys(settings).wrapper)
        written, subjects = await _write(settings, ring, points, per_subject)
        lines.append(
            f"points written to the gallery topic   {points:,} ({len(subjects):,} subjects) in {written:.1f} s"
        )
        folder = workdir / "replica-0"
        folder.mkdir()
        replica = Replica(settings, EdgeGallery(folder / "index", EMBEDDING_DIM), folder, KeyRing(ring.wrapper))
        started = time.perf_counter()
        await replica.start()
        rebuilt = time.perf_counter() - started
        count = await replica.gallery.count()
        lines.append(f"replica built from an empty disk       {count:,} points in {rebuilt:.1f} s")
        rng = np.random.default_rng(11)
        seconds = await _search_times(replica, rng, 200)
        lines.append(f"search on the built index (top 20)     {_percentiles(seconds)} (200 queries)")

        # Another replica builds its index (its own process) while this one serves searches.
        building = asyncio.ensure_future(_other_replica(prefix, workdir, key))
        during = await _search_times(replica, rng, building)
        other, other_built = building.result()
        lines.append(
            f"search while another replica builds   {_percentiles(during)} ({len(during)} queries during "
            f"its {other_built:.1f} s build)"
        )

        eraser = Eraser(settings, replica, gallery_keys(settings))
        await eraser.start()
        latencies = []
        acknowledged = set()
        for subject in subjects[:erasures]:
            request = {
                "schema_version": 1,
                "event_type": "subject.erasure_requested",
                "request_id": uuid.uuid4().hex,
                "subject_id": subject,
                "reason": "bench",
                "requested_by": "bench",
                "requested_at": now_iso(),
            }
            t0 = time.perf_counter()
            receipt = await eraser.erase(request)
            latencies.append(time.perf_counter() - t0)
            assert receipt is not None
            assert receipt["points_removed"] == per_subject
            assert receipt["replicas_pending"] == [], receipt["replicas_pending"]
            acknowledged.add(len(receipt["replicas"]))
        await eraser.stop()
        lines.append(
            f"erasure, request to signed receipt     {_percentiles(latencies)} ({erasures} subjects; the receipt "
            f"waits for the last live replica's acknowledgement: {'/'.join(map(str, sorted(acknowledged)))} replicas)"
        )
        lines.append(f"points left after the erasures         {await replica.gallery.count():,}")
        await replica.stop()
    finally:
        if other is not None:
            other.send_signal(signal.SIGTERM)
            await other.wait()
        await delete_topics(settings)
    return lines


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--replica":  # the other replica's process
        asyncio.run(replica_process(sys.argv[2], Path(sys.argv[3])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Help)
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--per-subject", type=int, default=2)
    p.add_argument("--erasures", type=int, default=50)
    args = p.parse_args()
    lines = on_local_broker(
        lambda workdir: bench(workdir, args.points, args.per_subject, args.erasures), "facestream-gallery-"
    )
    if lines is None:
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
