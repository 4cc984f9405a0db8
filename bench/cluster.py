"""The pipeline and the gallery on real clusters on loopback: three Kafka nodes (topics with 3
replicas, min.insync.replicas 2) and three Qdrant peers (the collection in 3 shards, 2 replicas).

1. Images/s end to end with 1, 2 and 3 workers per service (detector, embedder, matcher,
   notifier each in workers of their own, the gallery on the Qdrant cluster): a burst of searches
   submitted at once, timed from the first submission to the last result. On a 2-core machine
   the figure is the overhead of more workers, not a speedup.
2. Gallery search latency at the same size on the 3-peer cluster and on the embedded engine
   (identity-clustered synthetic points, as bench/gallery_scale.py makes them).

    .venv/bin/python bench/cluster.py [--images 300] [--workers 1,2,3] [--points 100000] [--queries 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from gallery_scale import Uniform
from qdrant_client import AsyncQdrantClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _help import Help

from devtools.kafka_nodes import KafkaNodes
from devtools.qdrant import QdrantCluster
from facestream.services.matcher.gallery import EdgeGallery, Gallery, GalleryPoint
from facestream.services.matcher.server import QdrantGallery
from tests.conftest import SAMPLES
from tests.faults.run import GALLERY, PROBES, Clusters, _search
from tests.harness import Pipeline
from tests.helpers import enrolment

SERVICES = ("detector", "embedder", "matcher", "notifier")


async def images_per_s(clusters: Clusters, workdir: Path, workers: int, images: int) -> float:
    services = [[name] for name in SERVICES for _ in range(workers)] + [["api", "audit"]]
    extra = {**clusters.settings(), "model_processes": 1, "gallery_name": f"b{uuid.uuid4().hex[:8]}"}
    pipeline = Pipeline(workdir, [SAMPLES], services=services, extra=extra)
    await pipeline.start()
    try:
        for i, path in enumerate(GALLERY):
            await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, pipeline.settings, "bench"))

        async def enrolled() -> bool:
            return sum(m["status"] == "enrolled" for m in await pipeline.events("matches")) >= len(GALLERY)

        await pipeline.wait_for(enrolled, limit_s=600, what="the gallery")
        ids = [f"probe-{i:05d}" for i in range(images)]
        started = time.perf_counter()
        for i, image_id in enumerate(ids):
            await pipeline.submit(image_id, _search(image_id, PROBES[i % len(PROBES)], pipeline.settings))

        async def done() -> bool:
            return len({m["image_id"] for m in await pipeline.events("matches")} & set(ids)) >= len(ids)

        await pipeline.wait_for(done, limit_s=1200, what="every search")
        return len(ids) / (time.perf_counter() - started)
    finally:
        await pipeline.stop()


async def latency(gallery: Gallery, vectors: np.ndarray, queries: np.ndarray) -> tuple[float, float, float]:
    """Ingest rate (points/s), then search p50 and p99 (ms) of one query at a time."""
    await gallery.open()
    try:
        started = time.perf_counter()
        for at in range(0, len(vectors), 1000):
            chunk = vectors[at : at + 1000]
            await gallery.upsert(
                [
                    GalleryPoint(str(uuid.uuid4()), v.tolist(), {"subject_id": f"s{(at + j) // 4}", "watchlist": "w"})
                    for j, v in enumerate(chunk)
                ]
            )
        ingest = len(vectors) / (time.perf_counter() - started)
        if isinstance(gallery, EdgeGallery):
            await gallery.index_now()
        elif isinstance(gallery, QdrantGallery):  # the server builds its graphs in the background
            for _ in range(3600):
                if (await gallery.client.get_collection(gallery.name)).status == "green":
                    break
                await asyncio.sleep(1.0)
        times = []
        for q in queries:
            t0 = time.perf_counter()
            await gallery.search([q.tolist()], 20, 0.0)
            times.append((time.perf_counter() - t0) * 1000)
        cuts = statistics.quantiles(times, n=100)
        return ingest, cuts[49], cuts[98]
    finally:
        await gallery.close()


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Help)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--workers", default="1,2,3", help="workers per service to try ('': only the gallery part)")
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=500)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="facestream-cluster-"))
    kafka = KafkaNodes(folder / "kafka", 3).start()
    qdrant = QdrantCluster(folder / "qdrant", 3).start()
    clusters = Clusters(kafka, qdrant)
    try:
        print("end to end on 3 Kafka nodes + 3 Qdrant peers, images/s:")
        for workers in [int(w) for w in args.workers.split(",") if w]:
            (folder / f"w{workers}").mkdir()
            rate = await images_per_s(clusters, folder / f"w{workers}", workers, args.images)
            print(f"  {workers} worker(s) per service: {rate:.1f}", flush=True)
        rng = np.random.default_rng(3)
        vectors = Uniform(rng, 0.06).points(args.points // 4, 4)
        queries = vectors[rng.choice(len(vectors), args.queries, replace=False)]
        print(f"gallery of {args.points:,} points, one query at a time, top 20:")
        cluster_gallery = QdrantGallery(AsyncQdrantClient(url=qdrant.url, timeout=60), 128, "bench", 3, 2)
        for name, gallery in (
            ("Qdrant cluster, 3 peers, 3 shards x 2 replicas", cluster_gallery),
            ("embedded engine (qdrant-edge), graph built", EdgeGallery(folder / "edge", 128)),
        ):
            ingest, p50, p99 = await latency(gallery, vectors, queries)
            print(f"  {name:50s} ingest {ingest:8.0f} points/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
    finally:
        qdrant.stop()
        kafka.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
