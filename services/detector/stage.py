"""Detector stage: image.submitted → face.detected (one per face) or match.result `no_face`."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import cv2
import httpx

from facestream import audit, contracts, purposes
from facestream.config import Settings
from facestream.contracts import ids
from facestream.contracts.consent import consent_problem
from facestream.contracts.timeutil import now_iso
from facestream.errors import EnrolmentRejected, RejectedEvent
from facestream.io.net import guarded_client
from facestream.ops.logs import bind_event, get_logger
from facestream.runtime.stage import Outcome, Output, Record, carry
from facestream.services.detector.images import decode, fetch, local_path, read_local
from facestream.services.detector.logic import (
    Face,
    FaceDetector,
    Image,
    Quality,
    align,
    detector_for,
    enrolment_face,
    passes,
    quality,
)

log = get_logger(__name__)
REVIEW = "candidate: investigative lead, requires human confirmation"


@dataclass(frozen=True)
class Analysis:
    faces: list[tuple[Face, Quality, Image]]
    sha256: str  # of the image bytes: part of every id derived from the image
    found: int
    rejected: list[str]
    seconds: float  # decode + detect + align, in the worker thread (queueing excluded)
    jpegs: list[bytes] = field(default_factory=list)  # a search's faces as JPEG (`analyse_image`)


def analyse(
    data: bytes, detector: FaceDetector, settings: Settings, enrol: bool, hint: dict[str, Any] | None = None
) -> Analysis:
    """Decode, detect, align and gate. CPU-bound; runs in a worker thread."""
    started = time.perf_counter()
    image = decode(data, settings)
    faces = detector.detect(image)
    kept: list[tuple[Face, Quality, Image]] = []
    rejected: list[str] = []
    for face in faces:
        crop = align(image, face)
        q = quality(face, crop)
        why = passes(
            q,
            face.score,
            min_face_px=settings.min_face_px,
            min_sharpness=settings.min_sharpness,
            min_score=settings.det_score_threshold,
        )
        if why is None:
            kept.append((face, q, crop))
        else:
            rejected.append(why)
    if enrol:
        # The subject is chosen among all detected faces, so a bystander is never enrolled
        # because the subject's face failed a quality gate.
        chosen = enrolment_face(faces, image.shape[1], image.shape[0], settings.enrol_dominance, hint)
        kept = [k for k in kept if k[0] is chosen]
        if not kept:
            raise EnrolmentRejected(
                f"the subject's face fails quality gates: {'; '.join(rejected)}", reason="enrolment_low_quality"
            )
    digest = hashlib.sha256(data).hexdigest()
    return Analysis(kept, digest, len(faces), rejected, time.perf_counter() - started)


def analyse_image(
    source: bytes | tuple[str, str | None], settings: Settings, enrol: bool, hint: dict[str, Any] | None = None
) -> Analysis:
    """`analyse` with this process's detector; module-level so a process pool can run it.
    `source` is the image's bytes, or a `file:` claim check's URI and sha256: the file is checked
    against the image roots, read and decoded here, so neither its bytes nor the path lookups
    burden the faust process. A search's faces come back JPEG-encoded as well, for their crops."""
    started = time.perf_counter()
    data = read_local(local_path(source[0], settings), settings, source[1]) if isinstance(source, tuple) else source
    analysis = analyse(data, detector_for(min(0.5, settings.det_score_threshold)), settings, enrol, hint)
    jpegs = [] if enrol else [jpeg(crop) for _, _, crop in analysis.faces]
    return dataclasses.replace(analysis, jpegs=jpegs, seconds=time.perf_counter() - started)


def jpeg(crop: Image) -> bytes:
    """The aligned face as the JPEG its crop event carries."""
    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok, "112x112 BGR always encodes"
    return bytes(data.tobytes())


def face_events(event: dict[str, Any], analysis: Analysis, trace_id: str, seconds: float) -> list[Output]:
    """The events for `event`'s analysis: a face.detected per face (and a search's probe crop), or
    the `no_face` result."""
    base = {
        **carry(event, "image_id", "intent", "source", "captured_at", "submitted_at"),
        "image_sha256": analysis.sha256,
    }
    sha = analysis.sha256
    now = now_iso()
    if not analysis.faces:
        reason = "no face found" if analysis.found == 0 else "; ".join(analysis.rejected)[:500]
        result_id = ids.event_id("match", event["image_id"], None, sha)
        intent = event["intent"]
        searched: list[Output] = []
        if intent["kind"] == "search":  # a search all the same: who, why, which case, that no face was found
            entry = audit.entry(
                "search",
                intent["requester"],
                "detector",
                result_id,
                details={"purpose": intent["purpose"], "status": "no_face", "candidates": 0},
                image_id=event["image_id"],
                case_ref=intent["case_ref"],
                match_event_id=result_id,
                watchlists=intent.get("watchlists"),
            )
            searched.append(audit.output(entry))
        return [
            *searched,
            Output(
                "matches",
                event["image_id"],
                {
                    "schema_version": 1,
                    "event_type": "match.result",
                    "event_id": result_id,
                    "trace_id": trace_id,
                    "status": "no_face",
                    "face_index": None,
                    "face_count": 0,
                    "candidates": [],
                    "reason": reason,
                    "review": REVIEW,
                    "occurred_at": now,
                    "timings": {"detector": seconds},
                    **base,
                },
            ),
        ]
    outputs = []
    search = event["intent"]["kind"] == "search"
    for index, (face, q, crop) in enumerate(analysis.faces):
        if search:  # the probe face a reviewer sees through the webhook's crop link
            data = analysis.jpegs[index] if analysis.jpegs else jpeg(crop)
            outputs.append(crop_event(event["image_id"], sha, index, data, trace_id, now))
        detected = {
            "schema_version": 1,
            "event_type": "face.detected",
            "event_id": ids.event_id("face", event["image_id"], index, sha),
            "trace_id": trace_id,
            "face_index": index,
            "face_count": len(analysis.faces),
            "bbox": [round(v, 1) for v in face.bbox],
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in face.landmarks],
            "det_score": round(face.score, 4),
            "quality": {"face_px": round(q.face_px, 1), "sharpness": round(q.sharpness, 1)},
            "aligned": {
                "format": "bgr8",
                "width": 112,
                "height": 112,
                "data_b64": base64.b64encode(crop.tobytes()).decode(),
            },
            "occurred_at": now,
            "timings": {"detector": seconds},
            **base,
        }
        outputs.append(Output("faces", event["image_id"], detected))
    return outputs


def crop_event(image_id: str, sha256: str, index: int, data: bytes, trace_id: str, now: str) -> Output:
    return Output(
        "crops",
        image_id,
        {
            "schema_version": 1,
            "event_type": "face.crop",
            "event_id": ids.event_id("match", image_id, index, sha256),  # the match it will produce
            "image_id": image_id,
            "trace_id": trace_id,
            "face_index": index,
            "format": "jpeg",
            "data_b64": base64.b64encode(data).decode(),
            "occurred_at": now,
        },
    )


class DetectorStage:
    """Fetches each image and has it decoded and analysed in a model process (`executor`)."""

    name = "detector"

    def __init__(
        self, settings: Settings, executor: Executor | None = None, client: httpx.AsyncClient | None = None
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.client = client

    async def start(self) -> None:
        if self.client is None:
            self.client = guarded_client(
                self.settings.fetch_allow_private, self.settings.fetch_timeout_s, setting="fetch_allow_private"
            )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def _one(self, record: Record) -> Outcome:
        assert self.client is not None
        event: dict[str, Any] | None = None
        try:
            event = contracts.loads(record.value, "image.submitted")
            trace_id = event.get("trace_id") or record.trace_id or ids.event_id("trace", event["image_id"])
            bind_event(image_id=event["image_id"], trace_id=trace_id)  # this record's own task
            if event["intent"]["kind"] == "enroll":  # before any work is spent on the photo
                problem = consent_problem(event["intent"]["consent"], self.settings.max_retention_days)
                if problem is not None:
                    raise EnrolmentRejected(problem, reason="enrolment_rejected")
                purposes.check_enrolment(self.settings, event["intent"])
            else:
                purposes.search_scope(self.settings, event["intent"])  # refused here, before the work
            fetch_started = time.perf_counter()
            image = event["image"]
            source: bytes | tuple[str, str | None]
            if image.get("uri", "").lower().startswith("file:"):
                source = (image["uri"], image.get("sha256"))
            else:
                source = await fetch(image, self.settings, self.client)
            fetch_seconds = time.perf_counter() - fetch_started
            enrol = event["intent"]["kind"] == "enroll"
            loop = asyncio.get_running_loop()
            hint = event["intent"].get("face_hint") if enrol else None  # which face is the subject's
            analysis = await loop.run_in_executor(self.executor, analyse_image, source, self.settings, enrol, hint)
            seconds = round(fetch_seconds + analysis.seconds, 4)
            log.debug(
                "detected",
                image_id=event["image_id"],
                trace_id=trace_id,
                faces=len(analysis.faces),
                found=analysis.found,
                seconds=seconds,
            )
            return Outcome(face_events(event, analysis, trace_id, seconds))
        except Exception as exc:
            if isinstance(exc, RejectedEvent) and event is not None:
                exc.event = event
            return Outcome(error=exc)

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        # Images of a batch are fetched and analysed concurrently (threads release the GIL).
        return list(await asyncio.gather(*(self._one(r) for r in records)))
