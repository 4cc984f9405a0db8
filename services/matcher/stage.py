"""Matcher stage: face.embedded → gallery search (match / no_match) or enrolment (enrolled)."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facestream import audit, contracts, purposes
from facestream.config import Settings
from facestream.contracts import ids
from facestream.contracts.timeutil import now_iso, parse_iso
from facestream.errors import DependencyUnavailable, EnrolmentRejected, RejectedEvent
from facestream.ops.logs import get_logger
from facestream.ops.metrics import SEARCH_SECONDS
from facestream.runtime.stage import FACE_FIELDS, Outcome, Output, Record, carry
from facestream.services.matcher import operating
from facestream.services.matcher.eraser import Eraser
from facestream.services.matcher.gallery import EdgeGallery, Gallery
from facestream.services.matcher.keys import KeyRing, gallery_keys
from facestream.services.matcher.logic import candidates
from facestream.services.matcher.replica import Replica, claim_directory, point_of

log = get_logger(__name__)
REVIEW = "candidate: investigative lead, requires human confirmation"
EMBEDDING_DIM = 128


def gallery_record(event: dict[str, Any], key_id: str, ring: KeyRing) -> dict[str, Any]:
    """The `gallery.point` record an enrolment's face becomes (see services/matcher/replica.py),
    its embedding encrypted with the subject's data key `key_id` (see services/matcher/keys.py)."""
    intent = event["intent"]
    record = {
        "schema_version": 1,
        "event_type": "gallery.point",
        "point_id": ids.point_id(intent["subject_id"], event["image_id"], event["face_index"], event["image_sha256"]),
        "subject_id": intent["subject_id"],
        "watchlist": intent["watchlist"],
        "image_id": event["image_id"],
        "image_sha256": event["image_sha256"],
        "face_index": event["face_index"],
        "model": event["model"],
        "consent": intent["consent"],
        "source": event["source"],
        "embedding_enc": {"key_id": key_id, "token": ring.encrypt(key_id, event["embedding"])},
        "enrolled_at": now_iso(),
        "trace_id": event["trace_id"],
    }
    if "submitted_at" in event:
        record["submitted_at"] = event["submitted_at"]
    return record


class MatcherStage:
    """Searches and enrolments against this replica's view of the gallery. Enrolments are written
    to the gallery topic, the system of record, and applied to this replica's index at once (the
    replica applies them again from the topic: upserts by point id change nothing)."""

    name = "matcher"

    def __init__(self, settings: Settings, gallery: Gallery | None = None, follow: bool = True) -> None:
        self.settings = settings
        self._given = gallery
        self._gallery = gallery
        self.follow = follow
        self.replica: Replica | None = None
        self.eraser: Eraser | None = None
        self._lock_fd: int | None = None
        self.keys = gallery_keys(settings)
        self.ring = KeyRing(self.keys.wrapper)
        self.calibration = operating.load(settings.calibration_file)

    @property
    def gallery(self) -> Gallery:
        if self._gallery is None:
            raise RuntimeError("the matcher stage is not started")
        return self._gallery

    async def start(self) -> None:
        folder: Path | None = None
        if self._given is None and self.settings.gallery_backend == "qdrant":
            from facestream.services.matcher.server import qdrant_gallery  # qdrant-client only when used

            self._gallery = qdrant_gallery(self.settings, EMBEDDING_DIM)
        elif self._given is None:
            folder, self._lock_fd = claim_directory(self.settings.gallery_path)
            self._gallery = EdgeGallery(
                folder / "index", EMBEDDING_DIM, self.settings.gallery_name, self.settings.gallery_index_after
            )
        if not purposes.bound(self.settings):
            log.warning("searches_not_purpose_bound", hint="declare [[watchlists]] with their purposes")
        if not self.follow:  # the stage's logic alone (tests without a broker)
            await self.gallery.open()
            return
        await audit.write(self.settings, self.operating_entry())
        self.replica = Replica(self.settings, self.gallery, folder, self.ring)
        await self.replica.start()  # refuses a gallery key that cannot unwrap the stored data keys
        self.eraser = Eraser(self.settings, self.replica, self.keys)
        await self.eraser.start()

    async def stop(self) -> None:
        try:
            if self.eraser is not None:
                await self.eraser.stop()
            if self.replica is not None:
                await self.replica.stop()
            else:
                await self.gallery.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def operating_entry(self) -> dict[str, Any]:
        """The audit entry of this matcher's threshold setting; one per distinct setting (its id
        derives from the setting), so restarts with the same one add nothing while the sequencer
        remembers it."""
        setting = {
            "threshold": self.settings.threshold,
            "threshold_fpir": self.settings.threshold_fpir,
            "calibration": self.calibration.source,
            "top_k": self.settings.top_k,
        }
        basis = "/".join(f"{k}={v}" for k, v in setting.items())
        return audit.entry("operating_point", "system:matcher", "matcher", basis, details=setting)

    def operating_point(self, size: int) -> tuple[float, dict[str, Any]]:
        """The threshold for a gallery of `size` subjects, and what it means: unless a fixed
        threshold is configured, the one whose expected false-positive identification rate at this
        size is the target (services/matcher/operating.py); the rate expected at it, either way."""
        target = self.settings.threshold_fpir
        fixed = self.settings.threshold
        threshold = fixed if fixed is not None else self.calibration.threshold_for(size, target)
        return threshold, {
            "false_positive_identification_rate": round(self.calibration.fpir(threshold, size), 6),
            "target_false_positive_identification_rate": target,
            "gallery_size": size,
            "threshold_follows_gallery": fixed is None,
            "calibration": self.calibration.source,
        }

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
        prepared: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = []
        for i, event in enrols:
            subject = event["intent"]["subject_id"]
            try:
                purposes.check_enrolment(self.settings, event["intent"])
            except RejectedEvent as exc:
                exc.event = event
                outcomes[i].error = exc
                continue
            erased_at = self.replica.erased.get(subject) if self.replica is not None else None
            submitted = event.get("submitted_at") or event["occurred_at"]
            if erased_at is not None and parse_iso(submitted) <= parse_iso(erased_at):
                outcomes[i].error = EnrolmentRejected(
                    f"the subject was erased at {erased_at}, after this enrolment was submitted ({submitted})",
                    reason="enrolment_rejected",
                )
                continue
            key_id, key_record = self.ring.key_for(subject)
            prepared.append((i, event, gallery_record(event, key_id, self.ring), key_record))
        if not prepared:
            return
        try:
            await self.gallery.upsert([point_of(r, e["embedding"]) for _, e, r, _ in prepared])
            size = await self.gallery.count()
        except Exception as exc:  # the gallery did not answer: these enrolments are tried again
            unavailable = DependencyUnavailable(f"gallery upsert failed: {type(exc).__name__}: {exc}"[:500])
            for i, *_ in prepared:
                outcomes[i].error = unavailable
            return
        seconds = (time.perf_counter() - started) / len(prepared)
        for i, event, record, key_record in prepared:
            intent = event["intent"]
            point = point_of(record, event["embedding"])
            if key_record is not None:  # a new data key: on the broker with the point that needs it
                outcomes[i].outputs.append(
                    Output("gallery.keys", f"{record['subject_id']}/{key_record['key_id']}", key_record)
                )
            log.info(
                "enrolled",
                image_id=event["image_id"],
                trace_id=event["trace_id"],
                point_id=point.point_id,
                watchlist=intent["watchlist"],
                enrolled_by=intent["consent"]["enrolled_by"],
            )
            # The system of record first: the emitter writes outputs in order, all before the ack.
            outcomes[i].outputs.append(Output("gallery", point.point_id, record))
            # Who enrolled whom, under which consent record (its reference only).
            outcomes[i].outputs.append(
                audit.output(
                    audit.entry(
                        "enrolment",
                        intent["consent"]["enrolled_by"],
                        "matcher",
                        point.point_id,
                        details={"consent_ref": intent["consent"]["consent_ref"], "face_index": event["face_index"]},
                        image_id=event["image_id"],
                        subject_id=intent["subject_id"],
                        point_id=point.point_id,
                        watchlists=[intent["watchlist"]],
                    )
                )
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
                try:
                    scope = purposes.search_scope(self.settings, intent)
                except RejectedEvent as exc:
                    exc.event = event
                    outcomes[i].error = exc
                    continue
                searches[tuple(scope or ())].append((i, event))
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
        threshold, operating_point = self.operating_point(size)
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
                intent = event["intent"]
                log.info(
                    "searched",
                    image_id=event["image_id"],
                    trace_id=event["trace_id"],
                    case_ref=intent["case_ref"],
                    requester=intent["requester"],
                    status=status,
                    candidates=len(found),
                )
                result = self._result(
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
                # Who searched, why, for which case, where, at which threshold, and what came back.
                entry = audit.entry(
                    "search",
                    intent["requester"],
                    "matcher",
                    result.value["event_id"],
                    details={
                        "purpose": intent["purpose"],
                        "status": status,
                        "candidates": len(found),
                        "threshold": round(threshold, 6),
                        "gallery_size": size,
                        "face_index": event["face_index"],
                    },
                    image_id=event["image_id"],
                    case_ref=intent["case_ref"],
                    match_event_id=result.value["event_id"],
                    watchlists=list(watchlists) or None,
                )
                outcomes[i].outputs += [result, audit.output(entry)]
        return outcomes
