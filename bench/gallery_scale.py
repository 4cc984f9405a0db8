"""The embedded gallery engine (qdrant-edge) at scale, without Kafka: identity-clustered synthetic
points (several per identity, as real enrolments are), ingest rate, the HNSW index build
(`optimize`), search p50/p99 and recall against exact search, and the process's peak memory; also
how long the copy of the shard takes that the matcher makes under its lock before a build. The
graph is built as the matcher builds it: on int8 copies of the vectors, the best candidates scored
again with the floats (`--float`: without the copies).

Two recalls. recall@10: the share of exact search's 10 nearest points that the graph search returns
as well. Past the query's own identity (4 points by default) those 10 are unrelated points at
near-equal low scores (about 0.3 here), which no matcher would return (the threshold at this size
is far above them). So also: the share of the query identity's own points found in the top 10,
the part of the answer a face search is for.

    .venv/bin/python bench/gallery_scale.py [--points 1000000] [--per-identity 4] [--queries 200]
                                            [--m 32] [--ef-construct 256] [--efs 64,128,512] [--no-build]
                                            [--float | --oversampling 2]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import qdrant_edge as qe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facestream.services.matcher.gallery import HNSW_EF_CONSTRUCT, HNSW_M, OVERSAMPLING

DIM = 128


def clustered(rng: np.random.Generator, identities: int, per: int, spread: float) -> np.ndarray:
    """`per` unit vectors around each of `identities` random unit centres (cosine ~0.6-0.8 within)."""
    centres = rng.standard_normal((identities, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((identities * per, DIM)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--per-identity", type=int, default=4)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--m", type=int, default=HNSW_M)
    p.add_argument("--ef-construct", type=int, default=HNSW_EF_CONSTRUCT)
    p.add_argument("--efs", default="64,128,512", help="search ef values to try")
    p.add_argument("--no-build", action="store_true", help="stop after ingest, the copy and exact search")
    p.add_argument("--spread", type=float, default=0.06, help="per-dimension noise around an identity's centre")
    p.add_argument("--float", action="store_true", help="the graph on the floats, without the matcher's int8 copies")
    p.add_argument("--oversampling", type=float, default=OVERSAMPLING, help="int8: candidates rescored, per result")
    args = p.parse_args()
    rng = np.random.default_rng(5)
    identities = args.points // args.per_identity
    vectors = clustered(rng, identities, args.per_identity, args.spread)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(vectors))]
    hnsw = qe.HnswIndexConfig(m=args.m, ef_construct=args.ef_construct, full_scan_threshold=10_000)
    quantization = (
        None if args.float else qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
    )
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
        hnsw_config=hnsw,
        quantization_config=quantization,
    )
    rescored = None if args.float else qe.QuantizationSearchParams(rescore=True, oversampling=args.oversampling)
    with tempfile.TemporaryDirectory(prefix="facestream-scale-") as folder:
        shard = qe.EdgeShard.create(str(Path(folder) / "index"), config)
        started = time.perf_counter()
        for start in range(0, len(vectors), 2000):
            batch = [
                qe.Point(ids[i], vectors[i].tolist(), {"subject_id": f"s{i // args.per_identity}"})
                for i in range(start, min(start + 2000, len(vectors)))
            ]
            shard.update(qe.UpdateOperation.upsert_points(batch))
        shard.flush()
        ingest = time.perf_counter() - started
        print(
            f"points {len(vectors):,} ({identities:,} identities x {args.per_identity}): ingested in {ingest:.1f} s "
            f"({len(vectors) / ingest:,.0f} points/s)"
        )
        # What the matcher does under its gallery lock before it builds a graph aside (EdgeGallery._copy):
        # flush, then copy the shard's folder. Searches, upserts and erasures wait that long.
        started = time.perf_counter()
        shard.flush()
        shutil.copytree(Path(folder) / "index", Path(folder) / "copy")
        size = sum(f.stat().st_size for f in (Path(folder) / "copy").rglob("*") if f.is_file()) / 2**20
        print(
            f"copy of the shard (held under the matcher's lock): {time.perf_counter() - started:.2f} s, {size:,.0f} MiB"
        )
        shutil.rmtree(Path(folder) / "copy")
        chosen = rng.choice(identities, size=args.queries, replace=False)
        queries = vectors[chosen * args.per_identity] + args.spread * rng.standard_normal((args.queries, DIM)).astype(
            np.float32
        )
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = [set(np.argsort(-(vectors @ q))[:10].tolist()) for q in queries]
        own = [set(range(c * args.per_identity, (c + 1) * args.per_identity)) for c in chosen]

        def run(params: qe.SearchParams | None) -> tuple[list[float], float, float]:
            seconds, found, mated = [], 0, 0
            for q, want, mine in zip(queries, truth, own, strict=True):
                t0 = time.perf_counter()
                hits = shard.search(qe.SearchRequest(query=qe.Query.Nearest(q.tolist()), limit=10, params=params))
                seconds.append(time.perf_counter() - t0)
                got = {uuid.UUID(str(h.id)).int - 1 for h in hits}
                found += len(got & want)
                mated += len(got & mine)
            return seconds, found / (10 * len(queries)), mated / (args.per_identity * len(queries))

        exact, recall, mated = run(qe.SearchParams(exact=True))
        print(f"exact search (top 10):                 {percentiles(exact)}, recall@10 {recall:.3f}, own {mated:.3f}")
        if args.no_build:
            shard.close()
            return 0
        started = time.perf_counter()
        shard.optimize()
        print(f"optimize (HNSW m={args.m}, ef_construct={args.ef_construct}): {time.perf_counter() - started:.1f} s")
        for ef in sorted(int(e) for e in args.efs.split(",")):
            indexed, recall, mated = run(qe.SearchParams(hnsw_ef=ef, quantization=rescored))
            kind = "" if args.float else f"int8 x{args.oversampling:g}, "
            print(
                f"HNSW search (top 10, {kind}ef={ef:<4d}):      {percentiles(indexed)}, recall@10 {recall:.3f}, "
                f"identity's own points {mated:.3f}"
            )
        shard.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = vectors.nbytes / 2**20
    print(f"peak memory of the process: {peak:,.0f} MiB (the vectors in numpy included: {held:,.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
