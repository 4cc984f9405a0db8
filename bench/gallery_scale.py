"""The embedded gallery engine (qdrant-edge) at scale, without Kafka: identity-clustered synthetic
points (several per identity, as real enrolments are), ingest rate, the HNSW index build
(`optimize`), search p50/p99 and recall against exact search, and the process's peak memory; also
how long the copy of the shard takes that the matcher makes under its lock before a build. The
graph is built as the matcher builds it: on int8 copies of the vectors, the best candidates scored
again with the floats (`--float`: without the copies).

Three recalls. recall@10: the share of exact search's 10 nearest points that the graph search
returns as well. Past the query's own identity (4 points by default) those 10 are unrelated points
at near-equal low scores (about 0.3 here), which no matcher would return (the threshold at this
size is far above them). So also: the share of the query identity's own points found in the top
10, and "candidates": the share of the exact 10 nearest scoring at or above the matcher's threshold
at this gallery size (the default target FPIR) that the graph search returns, i.e. whether the
candidate list would be the one an exact search gives.

Two kinds of points. By default, identity centres spread evenly over the sphere: in 128
dimensions the hardest case for a graph (every direction as likely, unrelated points all at about
the same score). `--like DIR` (a folder per person, as `facestream calibrate --labels` takes)
embeds those photos with the pipeline's own detector and embedder and draws points the way real
SFace embeddings lie: centres from a Gaussian with the mean and between-person covariance measured
there, each point (and each query: another photo of the person) its centre plus within-person
noise with the measured covariance. It prints the genuine and impostor scores of the real photos
beside those of the drawn points, so the likeness can be judged.

    .venv/bin/python bench/gallery_scale.py [--points 1000000] [--per-identity 4] [--queries 200]
                                            [--m 32] [--ef-construct 256] [--efs 64,128,512] [--no-build]
                                            [--float | --oversampling 2] [--like DIR | --spread 0.06]
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
from _help import Help

from facestream.config import Settings
from facestream.services.matcher import operating
from facestream.services.matcher.gallery import HNSW_EF_CONSTRUCT, HNSW_M, INT8_QUANTILE, OVERSAMPLING

DIM = 128


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class Uniform:
    """Centres evenly over the sphere, isotropic noise `spread` per dimension (cosine ~0.6-0.8
    within an identity); a query is an identity's first point with noise again."""

    def __init__(self, rng: np.random.Generator, spread: float) -> None:
        self.rng, self.spread = rng, spread

    def points(self, identities: int, per: int) -> np.ndarray:
        centres = unit(self.rng.standard_normal((identities, DIM)).astype(np.float32))
        return self._noisy(np.repeat(centres, per, axis=0))

    def _noisy(self, rows: np.ndarray) -> np.ndarray:
        return unit(rows + self.spread * self.rng.standard_normal(rows.shape).astype(np.float32))

    def queries(self, points: np.ndarray, chosen: np.ndarray, per: int) -> np.ndarray:
        return self._noisy(points[chosen * per])


class FaceLike:
    """Points drawn as real embeddings lie (module docstring): Gaussian centres with the measured
    mean and between-person covariance, Gaussian within-person noise with the measured covariance."""

    def __init__(self, rng: np.random.Generator, vectors: np.ndarray, labels: list[str]) -> None:
        self.rng = rng
        real = unit(vectors).astype(np.float64)
        people, person = np.unique(labels, return_inverse=True)
        means = np.stack([real[person == i].mean(axis=0) for i in range(len(people))])
        self.mean = real.mean(axis=0)
        ridge = 1e-6 * np.eye(DIM)  # fewer people than dimensions leaves the estimate singular
        self.between = np.linalg.cholesky(np.cov(means.T) + ridge)
        within = real - means[person]
        covariance = within.T @ within / (len(real) - len(people))
        self.within = np.linalg.cholesky(covariance + ridge)
        # Photos differ in how far they stray from the person (pose, light, blur): each drawn point's
        # noise is scaled as one of the real photos' distance from its person's mean.
        alone = np.bincount(person)[person] == 1  # a person with one photo says nothing about it
        self.scales = np.linalg.norm(within[~alone], axis=1) / np.sqrt(np.trace(covariance))
        self.scales *= np.sqrt(1 / np.mean(self.scales**2))  # the covariance keeps its size on average
        self.real, self.labels = real, labels

    def _draw(self, centres: np.ndarray) -> np.ndarray:
        noise = self.rng.standard_normal(centres.shape) @ self.within.T
        return unit(centres + noise * self.rng.choice(self.scales, size=(len(centres), 1)))

    def points(self, identities: int, per: int) -> np.ndarray:
        self.centres = self.mean + self.rng.standard_normal((identities, DIM)) @ self.between.T
        return self._draw(np.repeat(self.centres, per, axis=0))

    def queries(self, points: np.ndarray, chosen: np.ndarray, per: int) -> np.ndarray:
        return self._draw(self.centres[chosen])

    def likeness(self, points: np.ndarray, per: int) -> None:
        """Genuine and impostor scores: the real photos against a sample of drawn points."""
        drawn = [str(i // per) for i in range(4000 // per * per)]
        for name, rows, labels in (
            ("real photos", self.real, self.labels),
            ("drawn points", points[: len(drawn)], drawn),
        ):
            genuine, impostor = operating.pair_scores(rows, labels)
            print(
                f"{name:>12}: genuine mean {genuine.mean():.3f} (sd {genuine.std():.3f}), impostor mean "
                f"{impostor.mean():.3f} (sd {impostor.std():.3f}, 99th {np.percentile(impostor, 99):.3f}, "
                f"99.9th {np.percentile(impostor, 99.9):.3f})"
            )


def face_like(rng: np.random.Generator, folder: Path) -> FaceLike:
    from facestream.config import load_settings
    from facestream.services.calibrate import embed_photos, labelled_photos

    started = time.perf_counter()
    embedded = embed_photos(labelled_photos(folder), load_settings())
    print(
        f"fitted to {len(embedded.labels)} photos of {len(set(embedded.labels))} people in {folder} "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return FaceLike(rng, embedded.vectors, embedded.labels)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Help)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--per-identity", type=int, default=4)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--m", type=int, default=HNSW_M)
    p.add_argument("--ef-construct", type=int, default=HNSW_EF_CONSTRUCT)
    p.add_argument("--efs", default="64,128,512", help="search ef values to try")
    p.add_argument("--no-build", action="store_true", help="stop after ingest, the copy and exact search")
    p.add_argument("--spread", type=float, default=0.06, help="per-dimension noise around an identity's centre")
    p.add_argument(
        "--like", type=Path, help="a folder of photos per person: draw points as their embeddings lie (fit in ~30 s)"
    )
    p.add_argument("--float", action="store_true", help="the graph on the floats, without the matcher's int8 copies")
    p.add_argument("--oversampling", type=float, default=OVERSAMPLING, help="int8: candidates rescored, per result")
    args = p.parse_args()
    rng = np.random.default_rng(5)
    identities = args.points // args.per_identity
    model = face_like(rng, args.like) if args.like else Uniform(rng, args.spread)
    vectors = model.points(identities, args.per_identity)
    if isinstance(model, FaceLike):
        model.likeness(vectors, args.per_identity)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(vectors))]
    hnsw = qe.HnswIndexConfig(m=args.m, ef_construct=args.ef_construct, full_scan_threshold=10_000)
    int8 = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=INT8_QUANTILE, always_ram=True)
    quantization = None if args.float else int8
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
        queries = model.queries(vectors, chosen, args.per_identity)
        # The points a candidate list would hold: the exact 10 nearest at or above the matcher's
        # threshold for this many subjects (services/matcher/operating.py, the default target FPIR).
        threshold = operating.load().threshold_for(identities, Settings().threshold_fpir)
        truth, above = [], []
        for q in queries:
            scores = vectors @ q
            nearest = np.argsort(-scores)[:10]
            truth.append(set(nearest.tolist()))
            above.append(set(nearest[scores[nearest] >= threshold].tolist()))
        own = [set(range(c * args.per_identity, (c + 1) * args.per_identity)) for c in chosen]
        print(
            f"matcher's threshold at {identities:,} subjects: {threshold:.3f}; {sum(map(len, above))} of the "
            f"{10 * len(queries)} exact nearest points are at or above it"
        )

        def run(params: qe.SearchParams | None) -> tuple[list[float], float, float, float]:
            seconds, found, mated, candidates = [], 0, 0, 0
            for q, want, mine, listed in zip(queries, truth, own, above, strict=True):
                t0 = time.perf_counter()
                hits = shard.search(qe.SearchRequest(query=qe.Query.Nearest(q.tolist()), limit=10, params=params))
                seconds.append(time.perf_counter() - t0)
                got = {uuid.UUID(str(h.id)).int - 1 for h in hits}
                found += len(got & want)
                mated += len(got & mine)
                candidates += len(got & listed)
            return (
                seconds,
                found / (10 * len(queries)),
                mated / (args.per_identity * len(queries)),
                candidates / max(1, sum(map(len, above))),
            )

        exact, recall, mated, listed = run(qe.SearchParams(exact=True))
        print(
            f"exact search (top 10):                 {percentiles(exact)}, recall@10 {recall:.3f}, "
            f"own points {mated:.3f}, candidates {listed:.3f}"
        )
        if args.no_build:
            shard.close()
            return 0
        started = time.perf_counter()
        shard.optimize()
        print(f"optimize (HNSW m={args.m}, ef_construct={args.ef_construct}): {time.perf_counter() - started:.1f} s")
        for ef in sorted(int(e) for e in args.efs.split(",")):
            indexed, recall, mated, listed = run(qe.SearchParams(hnsw_ef=ef, quantization=rescored))
            kind = "" if args.float else f"int8 x{args.oversampling:g}, "
            print(
                f"HNSW search (top 10, {kind}ef={ef:<4d}):      {percentiles(indexed)}, recall@10 {recall:.3f}, "
                f"own points {mated:.3f}, candidates {listed:.3f}"
            )
        shard.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = vectors.nbytes / 2**20
    print(f"peak memory of the process: {peak:,.0f} MiB (the vectors in numpy included: {held:,.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
