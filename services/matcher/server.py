"""The gallery on a Qdrant server or cluster (the `Gallery` interface of services/matcher/gallery.py).

Only a matcher whose settings name a `qdrant_url` imports this module, and with it qdrant-client."""

from __future__ import annotations

from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from facestream.config import Settings
from facestream.ops.logs import get_logger
from facestream.services.matcher.gallery import (
    GALLERY_FIELDS,
    HNSW_EF_CONSTRUCT,
    HNSW_M,
    INT8_QUANTILE,
    OVERSAMPLING,
    SEARCH_EF,
    GalleryPoint,
    Hit,
    hit_from,
    term_from,
)

log = get_logger(__name__)
SEARCH = models.SearchParams(
    hnsw_ef=SEARCH_EF, quantization=models.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
)


def qdrant_gallery(settings: Settings, dim: int) -> QdrantGallery:
    """The gallery on the Qdrant server or cluster the settings name."""
    key = settings.qdrant_api_key.get_secret_value() or None
    client = AsyncQdrantClient(url=settings.qdrant_url, api_key=key, timeout=int(max(1, settings.qdrant_timeout_s)))
    shards, replicas = settings.qdrant_shards, settings.qdrant_replicas
    return QdrantGallery(client, dim, settings.gallery_name, shards=shards, replicas=replicas)


class QdrantGallery:
    """A Qdrant collection on a server or a cluster, through `qdrant-client`'s async API.

    On a cluster the collection is made with `shards` shards, each held by `replicas` peers: a
    search is answered while every shard has a live replica, and an update is applied when one
    replica of its shard has it (write consistency 1), the others catching up when they return.

    The collection is made as the embedded gallery's shard is (services/matcher/gallery.py): the
    same graph (m, ef_construct), walked on int8 copies kept in RAM, the best candidates scored
    again with the floats, searched at the same ef; so a server gallery answers as the embedded one
    does. A collection made by an earlier version keeps its settings (change them with Qdrant's
    update-collection API)."""

    def __init__(
        self, client: AsyncQdrantClient, dim: int, name: str = "faces", shards: int = 1, replicas: int = 1
    ) -> None:
        self.client = client
        self.dim = dim
        self.name = name
        self.shards = shards
        self.replicas = replicas

    async def open(self) -> None:
        if not await self.client.collection_exists(self.name):
            try:
                await self.client.create_collection(
                    self.name,
                    vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
                    shard_number=self.shards,
                    replication_factor=self.replicas,
                    write_consistency_factor=1,
                    hnsw_config=models.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
                    quantization_config=models.ScalarQuantization(
                        scalar=models.ScalarQuantizationConfig(
                            type=models.ScalarType.INT8, quantile=INT8_QUANTILE, always_ram=True
                        )
                    ),
                )
            except UnexpectedResponse as exc:  # another matcher made it first: the same collection
                if not await self.client.collection_exists(self.name):
                    raise
                log.info("gallery_collection_exists", collection=self.name, status=exc.status_code)
        for field in GALLERY_FIELDS:  # idempotent: each matcher makes sure, also after a race
            await self.client.create_payload_index(self.name, field, models.PayloadSchemaType.KEYWORD, wait=True)

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
            models.QueryRequest(
                query=v, limit=limit, score_threshold=threshold, filter=flt, params=SEARCH, with_payload=True
            )
            for v in vectors
        ]
        responses = await self.client.query_batch_points(self.name, requests=requests)
        return [[hit_from(p.id, p.score, p.payload) for p in r.points] for r in responses]

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
            found.update({str(r.id): term_from(r.payload) for r in records})
            if offset is None:
                return found

    async def count(self) -> int:
        return (await self.client.count(self.name, exact=True)).count
