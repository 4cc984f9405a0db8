"""The gallery: one interface, two implementations (as qdrant-client has one API for a server
and for local mode).

- `EdgeGallery`: Qdrant's engine in-process (`qdrant-edge-py`) on local disk, the embedded default.
- `QdrantGallery` (services/matcher/server.py): a Qdrant server or cluster through the async
  client, in a module of its own so that only a matcher configured for a server imports
  qdrant-client (0.7 s of every worker's and command's start).

The embedded engine searches new points by scanning them, and a graph (HNSW) pays once enough
points are waiting for it: `index_after` (20,000 by default: an exact scan of that many 128-d
points takes about a millisecond here; bench/gallery_scale.py). Qdrant Edge builds the graph in
`optimize`, which holds the interpreter lock for as long as it runs (a minute at 60,000 points),
so it never runs in the matcher's process: the shard is copied, a child process builds the graph
on the copy, and the copy, with every change made meanwhile applied to it again, replaces the
live shard. Searches and updates go on throughout on the live one.

Points carry the subject id, watchlist, source image and the consent record's reference, so an
erasure can find every point of a subject. Point ids are deterministic (see `facestream.contracts.ids`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from facestream.ops.logs import get_logger

log = get_logger(__name__)

GALLERY_FIELDS = ("subject_id", "watchlist")
# The graph and the search's ef, measured at 1,000,000 identity-clustered points
# (bench/gallery_scale.py; the README has the table): m 32 / ef_construct 256 finds every one of a
# query identity's own points at ef 128 (p99 5.6 ms); m 16 / 128 missed 13% of them there.
HNSW_M = 32
HNSW_EF_CONSTRUCT = 256
SEARCH_EF = 128
# The graph walks int8 copies of the vectors (kept in RAM, 128 bytes a point) and the best
# OVERSAMPLING x limit are scored again with the floats, so scores and thresholds are exact. At a
# million points this halved both the build (1,045 s against 2,159 s) and the search time at equal
# recall (bench/gallery_scale.py, and --float without them; the README has both tables).
OVERSAMPLING = 2.0
INT8_QUANTILE = 0.99  # the int8 range covers this share of the values; outliers are clipped
INDEX_AFTER = 20_000
RETRY_BUILD_S = 600.0  # a build that failed (disk full, killed) is not tried again on every upsert
COPY_ATTEMPTS = 5  # a copy that meets a file gone under it is made again
CURRENT = "CURRENT"  # names the live shard's folder, written atomically when a built one replaces it


@dataclass(frozen=True)
class GalleryPoint:
    point_id: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    point_id: str
    score: float
    subject_id: str
    watchlist: str


class Gallery(Protocol):
    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def upsert(self, points: list[GalleryPoint]) -> None: ...
    async def search(
        self, vectors: list[list[float]], limit: int, threshold: float, watchlists: list[str] | None = None
    ) -> list[list[Hit]]: ...
    async def delete_subject(self, subject_id: str) -> None: ...
    async def delete_points(self, point_ids: list[str]) -> None: ...
    async def point_ids(self, subject_id: str) -> list[str]: ...
    async def terms(self) -> dict[str, tuple[str, str]]: ...
    async def count(self) -> int: ...


def hit_from(point_id: Any, score: float, payload: dict[str, Any] | None) -> Hit:
    payload = payload or {}
    return Hit(str(point_id), float(score), str(payload.get("subject_id", "")), str(payload.get("watchlist", "")))


def term_from(payload: dict[str, Any] | None) -> tuple[str, str]:
    payload = payload or {}
    return str(payload.get("subject_id", "")), str(payload.get("retain_until", ""))


class EdgeGallery:
    """Qdrant Edge shard on local disk, used from one process (the matcher). `path` holds the live
    shard's folder (named in CURRENT) and, while a graph is built, the copy it is built on."""

    def __init__(self, path: Path, dim: int, name: str = "faces", index_after: int = INDEX_AFTER) -> None:
        self.path = path
        self.dim = dim
        self.name = name
        self.index_after = index_after
        self._shard: Any = None
        self._live = ""  # the live shard's folder name under path
        self._lock = threading.Lock()
        self._journal: list[Any] | None = None  # while a graph is built: every change since the copy
        self._build: asyncio.Task[None] | None = None
        self.builds = 0  # graphs built and swapped in since open
        self._next_try = 0.0  # after a failed build: not again before this (monotonic) time

    def _config(self) -> Any:
        qe = self._qe
        vector_kb = self.dim * 4 / 1024
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=int(self.index_after * vector_kb)
            ),
            # A segment is given a graph once it holds index_after points (the threshold is in KB).
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=max(1, int(self.index_after * vector_kb))),
            quantization_config=qe.ScalarQuantizationConfig(
                type=qe.ScalarType.Int8, quantile=INT8_QUANTILE, always_ram=True
            ),
        )

    async def open(self) -> None:
        import qdrant_edge as qe

        self._qe = qe
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        qe = self._qe
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / "edge_config.json").exists():  # a shard from before CURRENT: moved into "0"
            legacy = self.path / "0"
            legacy.mkdir()
            for entry in list(self.path.iterdir()):
                if entry != legacy:
                    entry.rename(legacy / entry.name)
            _write_current(self.path, "0")
        current = self.path / CURRENT
        self._live = current.read_text().strip() if current.exists() else "0"
        for stale in self.path.iterdir():  # a build cut short, or a replaced shard not yet removed
            if stale.is_dir() and stale.name != self._live:
                shutil.rmtree(stale, ignore_errors=True)
        folder = self.path / self._live
        if (folder / "edge_config.json").exists() or any(folder.glob("segments*")):
            self._shard = qe.EdgeShard.load(str(folder), self._config())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self._shard = qe.EdgeShard.create(str(folder), self._config())
            _write_current(self.path, self._live)
        indexed = set(self._shard.info().payload_schema)
        for field in GALLERY_FIELDS:  # erasure finds a subject's points, searches filter watchlists
            if field not in indexed:
                self._shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
        self._shard.flush()

    async def close(self) -> None:
        if self._build is not None:
            self._build.cancel()
            await asyncio.gather(self._build, return_exceptions=True)
        if self._shard is not None:
            shard, self._shard = self._shard, None
            await asyncio.to_thread(self._flush_close, shard)

    def _flush_close(self, shard: Any) -> None:
        with self._lock:
            shard.flush()
            shard.close()

    def unindexed(self) -> int:
        """Points the graph does not hold yet (searched by a scan)."""
        with self._lock:
            info = self._shard.info()
            return int(info.points_count) - int(info.indexed_vectors_count)

    async def _maybe_build(self) -> None:
        if self._build is not None or time.monotonic() < self._next_try:
            return
        waiting = await asyncio.to_thread(self.unindexed)
        # Asked again after the wait: a concurrent upsert may have started one meanwhile (two
        # builds on one target folder each removed the other's files and both failed).
        if waiting >= self.index_after and self._build is None:
            self._build = asyncio.create_task(self._build_graph())

    async def index_now(self) -> bool:
        """Build the graph now if any point waits for it, and wait for it (tests, benchmarks)."""
        if self._build is None and self.unindexed() > 0:
            self._build = asyncio.create_task(self._build_graph())
        if self._build is None:
            return False
        await asyncio.shield(self._build)
        return True

    async def _build_graph(self) -> None:
        started = time.perf_counter()
        building = str(int(self._live) + 1)
        target = self.path / building
        try:
            await asyncio.to_thread(self._copy, target)
            copied = time.perf_counter() - started  # searches and updates wait this long (the lock)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, str(target), str(self.dim), str(self.index_after)
            )
            try:
                code = await proc.wait()
            except asyncio.CancelledError:  # the gallery closes: the build goes with it
                proc.kill()
                await proc.wait()
                raise
            if code != 0:
                raise RuntimeError(f"the graph build exited with {code}")
            replayed = await asyncio.to_thread(self._swap, target)
            self.builds += 1
            log.info(
                "gallery_graph_built",
                shard=building,
                replayed=replayed,
                copy_s=round(copied, 2),
                seconds=round(time.perf_counter() - started, 1),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the live shard is whole: searches scan more until the next try
            self._next_try = time.monotonic() + RETRY_BUILD_S
            log.error("gallery_graph_build_failed", error=f"{type(exc).__name__}: {exc}"[:300], retry_s=RETRY_BUILD_S)
        finally:
            with self._lock:
                self._journal = None
            if self._live != building:
                shutil.rmtree(target, ignore_errors=True)
            self._build = None

    def _copy(self, target: Path) -> None:
        """The live shard as it is now, copied; every change from here on is journaled.

        The write-ahead log goes too (it numbers the operations: a copy with a fresh log would skip
        a later removal of an older point). A log file listed and gone when read failed a copy once
        (most likely the concurrent build `_maybe_build` now prevents, whose swap removed the old
        folder; the engine also has a thread of its own for its log): the copy is made again."""
        with self._lock:  # nothing changes the shard while it is copied
            self._shard.flush()
            for attempt in range(1, COPY_ATTEMPTS + 1):
                _clear(target)
                try:
                    shutil.copytree(self.path / self._live, target, copy_function=_copy_file)
                    break
                except (shutil.Error, OSError) as exc:
                    if attempt == COPY_ATTEMPTS:
                        raise
                    log.warning("gallery_copy_retried", attempt=attempt, error=f"{type(exc).__name__}: {exc}"[:300])
                    time.sleep(0.05 * attempt)
            self._journal = []

    def _swap(self, target: Path) -> int:
        """The built copy, with the journaled changes applied again, becomes the live shard."""
        qe = self._qe
        with self._lock:
            assert self._journal is not None
            built = qe.EdgeShard.load(str(target), self._config())
            for op in self._journal:
                built.update(op)
            built.flush()
            _write_current(self.path, target.name)  # from here a restart opens the built one
            old, self._shard, replaced = self._shard, built, self._live
            self._live, replayed, self._journal = target.name, len(self._journal), None
        old.close()
        shutil.rmtree(self.path / replaced, ignore_errors=True)
        return replayed

    def _filter(self, watchlists: list[str] | None) -> Any:
        if not watchlists:
            return None
        qe = self._qe
        return qe.Filter(must=[qe.FieldCondition(key="watchlist", match=qe.MatchAny(watchlists))])

    async def upsert(self, points: list[GalleryPoint]) -> None:
        qe = self._qe
        op = qe.UpdateOperation.upsert_points([qe.Point(p.point_id, p.vector, p.payload) for p in points])
        await asyncio.to_thread(self._update_and_flush, op)
        await self._maybe_build()

    def _update_and_flush(self, op: Any) -> None:
        with self._lock:
            self._shard.update(op)
            # Durable before the enrolment's offset is committed.
            self._shard.flush()
            if self._journal is not None:  # a graph is being built on a copy: it gets this too
                self._journal.append(op)

    async def search(
        self, vectors: list[list[float]], limit: int, threshold: float, watchlists: list[str] | None = None
    ) -> list[list[Hit]]:
        qe = self._qe
        flt = self._filter(watchlists)
        rescored = qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
        params = qe.SearchParams(hnsw_ef=SEARCH_EF, quantization=rescored)

        def run() -> list[list[Hit]]:
            with self._lock:
                results = []
                for vector in vectors:
                    request = qe.SearchRequest(
                        query=qe.Query.Nearest(vector),
                        limit=limit,
                        filter=flt,
                        with_payload=True,
                        score_threshold=threshold,
                        params=params,
                    )
                    results.append([hit_from(p.id, p.score, p.payload) for p in self._shard.search(request)])
                return results

        return await asyncio.to_thread(run)

    async def delete_subject(self, subject_id: str) -> None:
        qe = self._qe
        flt = qe.Filter(must=[qe.FieldCondition(key="subject_id", match=qe.MatchValue(subject_id))])
        await asyncio.to_thread(self._update_and_flush, qe.UpdateOperation.delete_points_by_filter(flt))

    async def delete_points(self, point_ids: list[str]) -> None:
        await asyncio.to_thread(self._update_and_flush, self._qe.UpdateOperation.delete_points(list[Any](point_ids)))

    async def point_ids(self, subject_id: str) -> list[str]:
        qe = self._qe
        flt = qe.Filter(must=[qe.FieldCondition(key="subject_id", match=qe.MatchValue(subject_id))])

        def run() -> list[str]:
            found: list[str] = []
            offset: Any = None
            with self._lock:
                while True:
                    request = qe.ScrollRequest(offset=offset, limit=256, filter=flt, with_payload=False)
                    records, offset = self._shard.scroll(request)
                    found += [str(r.id) for r in records]
                    if offset is None:
                        return found

        return await asyncio.to_thread(run)

    async def terms(self) -> dict[str, tuple[str, str]]:
        """Every point's subject and retention term (`retain_until`), by point id."""
        qe = self._qe

        def run() -> dict[str, tuple[str, str]]:
            found: dict[str, tuple[str, str]] = {}
            offset: Any = None
            while True:
                with self._lock:  # a page at a time: searches go on between pages
                    request = qe.ScrollRequest(offset=offset, limit=1024, with_payload=True)
                    records, offset = self._shard.scroll(request)
                for r in records:
                    found[str(r.id)] = term_from(r.payload)
                if offset is None:
                    return found

        return await asyncio.to_thread(run)

    async def count(self) -> int:
        def run() -> int:
            with self._lock:
                return int(self._shard.count(self._qe.CountRequest(exact=True)))

        return await asyncio.to_thread(run)


def _copy_file(src: str, dst: str) -> object:
    return shutil.copy2(src, dst)


def _clear(target: Path) -> None:
    """Removes a folder left by an earlier build; one that cannot be removed is an error here,
    not a confusing one from the copy."""
    shutil.rmtree(target, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)  # raises with the reason


def _write_current(folder: Path, name: str) -> None:
    tmp = folder / f"{CURRENT}.tmp"
    tmp.write_text(name)
    os.replace(tmp, folder / CURRENT)


def build_graph(folder: Path, dim: int, index_after: int) -> bool:
    """Build the graph of the (copied, unopened elsewhere) shard at `folder`: its own process."""
    import qdrant_edge

    os.nice(10)  # the pipeline's own work comes first; the scan serves until the graph is ready
    gallery = EdgeGallery(folder.parent, dim, index_after=index_after)
    gallery._qe = qdrant_edge
    shard = qdrant_edge.EdgeShard.load(str(folder), gallery._config())
    try:
        return bool(shard.optimize())
    finally:
        shard.flush()
        shard.close()


if __name__ == "__main__":  # python -m facestream.services.matcher.gallery FOLDER DIM INDEX_AFTER
    build_graph(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
