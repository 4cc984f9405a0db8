"""Matcher stage: face.embedded → gallery search (match / no_match) or enrolment (enrolled)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient

from facestream import contracts
from facestream.config import Settings
from facestream.contracts import ids
from facestream.contracts.timeutil import now_iso
from facestream.errors import DependencyUnavailable
from facestream.ops.logs import get_logger
from facestream.ops.metrics import SEARCH_SECONDS
from facestream.runtime.stage import FACE_FIELDS, Outcome, Output, Record, carry
from facestream.services.matcher.gallery import EdgeGallery, Gallery, GalleryPoint, QdrantGallery
from facestream.services.matcher.logic import candidates

log = get_logger(__name__)
REVIEW = "candidate: investigative lead, requires human confirmation"
EMBEDDING_DIM = 128


def make_gallery(settings: Settings) -> Gallery:
    if settings.gallery_backend == "qdrant":
        return QdrantGallery(AsyncQdrantClient(url=settings.qdrant_url), EMBEDDING_DIM, settings.gallery_name)
    return EdgeGallery(settings.gallery_path, EMBEDDING_DIM, settings.gallery_name)


def enrolment_point(event: dict[str, Any]) -> GalleryPoint:
    intent = event["intent"]
    consent = intent["consent"]
    return GalleryPoint(
        ids.point_id(intent["subject_id"], event["image_id"], event["face_index"], event["image_sha256"]),
        event["embedding"],
        {
            "subject_id": intent["subject_id"],
            "watchlist": intent["watchlist"],
            "image_id": event["image_id"],
            "source": event["source"],
            "model": f"{event['model']['name']}/{event['model']['version']}",
            "lawful_basis": consent["lawful_basis"],
            "consent_ref": consent["consent_ref"],
            "retain_until": consent["retain_until"],
            "source_attestation": consent["source_attestation"],
            "enrolled_by": consent["enrolled_by"],
            "enrolled_at": now_iso(),
        },
    )


class MatcherStage:
    name = "matcher"

    def __init__(self, settings: Settings, gallery: Gallery | None = None) -> None:
        self.settings = settings
        self.gallery = gallery or make_gallery(settings)

    async def start(self) -> None:
        await self.gallery.open()

    async def stop(self) -> None:
        await self.gallery.close()

    def _result(self, event: dict[str, Any], status: str, seconds: float, size: int, **extra: Any) -> Output:
        out = carry(event, *FACE_FIELDS, "model")
        out.update(
            {
                "schema_version": 1,
                "event_type": "match.result",
                "event_id": ids.event_id("match", event["image_id"], event["face_index"], event["image_sha256"]),
                "status": status,
                "candidates": [],
                "review": REVIEW,
                "occurred_at": now_iso(),
                "gallery": {"name": self.settings.gallery_name, "size": size},
                "timings": {**event.get("timings", {}), "matcher": round(seconds, 4)},
                **extra,
            }
        )
        return Output("matches", event["image_id"], out)

    async def _enrol(self, enrols: list[tuple[int, dict[str, Any]]], outcomes: list[Outcome]) -> None:
        started = time.perf_counter()
        points = [enrolment_point(e) for _, e in enrols]
        try:
            await self.gallery.upsert(points)
            size = await self.gallery.count()
        except Exception as exc:  # the gallery did not answer: these enrolments are tried again
            unavailable = DependencyUnavailable(f"gallery upsert failed: {type(exc).__name__}: {exc}"[:500])
            for i, _ in enrols:
                outcomes[i].error = unavailable
            return
        seconds = (time.perf_counter() - started) / len(enrols)
        for (i, event), point in zip(enrols, points, strict=True):
            intent = event["intent"]
            # Audit line: who enrolled whom, under which consent record (reference only).
            log.info(
                "enrolled",
                image_id=event["image_id"],
                trace_id=event["trace_id"],
                point_id=point.point_id,
                watchlist=intent["watchlist"],
                enrolled_by=intent["consent"]["enrolled_by"],
            )
            outcomes[i].outputs.append(
                self._result(
                    event,
                    "enrolled",
                    seconds,
                    size,
                    enrolment={
                        "point_id": point.point_id,
                        "subject_id": intent["subject_id"],
                        "watchlist": intent["watchlist"],
                    },
                )
            )

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = [Outcome() for _ in records]
        enrols: list[tuple[int, dict[str, Any]]] = []
        searches: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for i, record in enumerate(records):
            try:
                event = contracts.loads(record.value, "face.embedded")
            except Exception as exc:
                outcomes[i].error = exc
                continue
            intent = event["intent"]
            if intent["kind"] == "enroll":
                enrols.append((i, event))
            else:
                searches[tuple(sorted(intent.get("watchlists", ())))].append((i, event))
        if enrols:
            await self._enrol(enrols, outcomes)
        try:
            size = await self.gallery.count() if searches else 0
        except Exception as exc:
            unavailable = DependencyUnavailable(f"gallery count failed: {type(exc).__name__}: {exc}"[:500])
            for group in searches.values():
                for i, _ in group:
                    outcomes[i].error = unavailable
            return outcomes
        threshold = self.settings.threshold
        operating_point = {
            "false_positive_identification_rate": self.settings.threshold_fpir,
            "calibration": "devset, ~100 enrolled subjects, probes of people not enrolled (bench/calibrate.py)",
        }
        for watchlists, group in searches.items():
            t0 = time.perf_counter()
            try:
                results = await self.gallery.search(
                    [e["embedding"] for _, e in group], self.settings.top_k * 4, threshold, list(watchlists) or None
                )
            except Exception as exc:  # the gallery did not answer: these searches are tried again
                unavailable = DependencyUnavailable(f"gallery search failed: {type(exc).__name__}: {exc}"[:500])
                for i, _ in group:
                    outcomes[i].error = unavailable
                continue
            seconds = (time.perf_counter() - t0) / len(group)
            for _ in group:
                SEARCH_SECONDS.observe(seconds)
            for (i, event), hits in zip(group, results, strict=True):
                found = candidates(hits, threshold, self.settings.top_k)
                status = "match" if found else "no_match"
                # Audit line: who searched, why, for which case, and what came back (ids only).
                log.info(
                    "searched",
                    image_id=event["image_id"],
                    trace_id=event["trace_id"],
                    case_ref=event["intent"]["case_ref"],
                    requester=event["intent"]["requester"],
                    status=status,
                    candidates=len(found),
                )
                outcomes[i].outputs.append(
                    self._result(
                        event,
                        status,
                        seconds,
                        size,
                        threshold=threshold,
                        operating_point=operating_point,
                        candidates=[
                            {"subject_id": c.subject_id, "watchlist": c.watchlist, "score": c.score, "rank": c.rank}
                            for c in found
                        ],
                    )
                )
        return outcomes
