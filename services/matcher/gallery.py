"""The gallery: one interface, two implementations (as qdrant-client has one API for a server
and for local mode).

- `EdgeGallery`: Qdrant's engine in-process (`qdrant-edge-py`) on local disk, the embedded default.
- `QdrantGallery`: a Qdrant server (or qdrant-client's local mode) through the async client.

Points carry the subject id, watchlist, source image and the consent record's reference, so an
erasure can find every point of a subject. Point ids are deterministic (see `facestream.contracts.ids`).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qdrant_client import AsyncQdrantClient, models

GALLERY_FIELDS = ("subject_id", "watchlist")


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


def _hit(point_id: Any, score: float, payload: dict[str, Any] | None) -> Hit:
    payload = payload or {}
    return Hit(str(point_id), float(score), str(payload.get("subject_id", "")), str(payload.get("watchlist", "")))


def _term(payload: dict[str, Any] | None) -> tuple[str, str]:
    payload = payload or {}
    return str(payload.get("subject_id", "")), str(payload.get("retain_until", ""))


class EdgeGallery:
    """Qdrant Edge shard on local disk, used from one process (the matcher)."""

    def __init__(self, path: Path, dim: int, name: str = "faces") -> None:
        self.path = path
        self.dim = dim
        self.name = name
        self._shard: Any = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        import qdrant_edge as qe

        self._qe = qe
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine))
        if (self.path / "edge_config.json").exists() or any(self.path.glob("segments*")):
            self._shard = await asyncio.to_thread(qe.EdgeShard.load, str(self.path), config)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._shard = await asyncio.to_thread(qe.EdgeShard.create, str(self.path), config)

    async def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            await asyncio.to_thread(self._flush_close, shard)

    def _flush_close(self, shard: Any) -> None:
        with self._lock:
            shard.flush()
            shard.close()

    def _filter(self, watchlists: list[str] | None) -> Any:
        if not watchlists:
            return None
        qe = self._qe
        return qe.Filter(must=[qe.FieldCondition(key="watchlist", match=qe.MatchAny(watchlists))])

    async def upsert(self, points: list[GalleryPoint]) -> None:
        qe = self._qe
        op = qe.UpdateOperation.upsert_points([qe.Point(p.point_id, p.vector, p.payload) for p in points])
        await asyncio.to_thread(self._update_and_flush, op)

    def _update_and_flush(self, op: Any) -> None:
        with self._lock:
            self._shard.update(op)
            # Durable before the enrolment's offset is committed.
            self._shard.flush()

    async def search(
        self, vectors: list[list[float]], limit: int, threshold: float, watchlists: list[str] | None = None
    ) -> list[list[Hit]]:
        qe = self._qe
        flt = self._filter(watchlists)

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
                    )
                    results.append([_hit(p.id, p.score, p.payload) for p in self._shard.search(request)])
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
                    found[str(r.id)] = _term(r.payload)
                if offset is None:
                    return found

        return await asyncio.to_thread(run)

    async def count(self) -> int:
        def run() -> int:
            with self._lock:
                return int(self._shard.count(self._qe.CountRequest(exact=True)))

        return await asyncio.to_thread(run)


class QdrantGallery:
    """A Qdrant collection through `qdrant-client`'s async API (server, or local mode for tests)."""

    def __init__(self, client: AsyncQdrantClient, dim: int, name: str = "faces") -> None:
        self.client = client
        self.dim = dim
        self.name = name

    async def open(self) -> None:
        if not await self.client.collection_exists(self.name):
            await self.client.create_collection(
                self.name, vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE)
            )
            for field in GALLERY_FIELDS:
                await self.client.create_payload_index(self.name, field, models.PayloadSchemaType.KEYWORD)

    async def close(self) -> None:
        await self.client.close()

    def _filter(self, watchlists: list[str] | None) -> models.Filter | None:
        if not watchlists:
            return None
        return models.Filter(must=[models.FieldCondition(key="watchlist", match=models.MatchAny(any=watchlists))])

    async def upsert(self, points: list[GalleryPoint]) -> None:
        await self.client.upsert(
            self.name,
            points=[models.PointStruct(id=p.point_id, vector=p.vector, payload=p.payload) for p in points],
            wait=True,
        )

    async def search(
        self, vectors: list[list[float]], limit: int, threshold: float, watchlists: list[str] | None = None
    ) -> list[list[Hit]]:
        flt = self._filter(watchlists)
        requests = [
            models.QueryRequest(query=v, limit=limit, score_threshold=threshold, filter=flt, with_payload=True)
            for v in vectors
        ]
        responses = await self.client.query_batch_points(self.name, requests=requests)
        return [[_hit(p.id, p.score, p.payload) for p in r.points] for r in responses]

    async def delete_subject(self, subject_id: str) -> None:
        flt = models.Filter(must=[models.FieldCondition(key="subject_id", match=models.MatchValue(value=subject_id))])
        await self.client.delete(self.name, points_selector=models.FilterSelector(filter=flt), wait=True)

    async def delete_points(self, point_ids: list[str]) -> None:
        await self.client.delete(self.name, points_selector=models.PointIdsList(points=list(point_ids)), wait=True)

    async def point_ids(self, subject_id: str) -> list[str]:
        flt = models.Filter(must=[models.FieldCondition(key="subject_id", match=models.MatchValue(value=subject_id))])
        found: list[str] = []
        offset: Any = None
        while True:
            records, offset = await self.client.scroll(self.name, scroll_filter=flt, limit=256, offset=offset)
            found += [str(r.id) for r in records]
            if offset is None:
                return found

    async def terms(self) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        offset: Any = None
        while True:
            records, offset = await self.client.scroll(
                self.name, limit=1024, offset=offset, with_payload=["subject_id", "retain_until"]
            )
            found.update({str(r.id): _term(r.payload) for r in records})
            if offset is None:
                return found

    async def count(self) -> int:
        return (await self.client.count(self.name, exact=True)).count
