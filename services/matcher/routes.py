"""The gallery's operations in the HTTP API: its subjects (from the gallery topic, the system of
record, never a replica's index: no vector is ever shown) and their erasure, with its signed
receipt."""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from facestream.api import Caller, Problem, Role, Routes, require
from facestream.config import Settings
from facestream.ops.logs import get_logger
from facestream.services.matcher.cli import by_subject, points, receipt_for, request_erasure, subjects
from facestream.services.matcher.eraser import receipts, verify
from facestream.services.matcher.keys import gallery_keys

log = get_logger(__name__)


def _point(p: dict[str, Any]) -> dict[str, Any]:
    keep = ("point_id", "watchlist", "image_id", "model", "enrolled_at", "consent", "data_key_id")
    return {k: p[k] for k in keep if k in p}


def routes(settings: Settings) -> Routes:
    router = APIRouter(prefix="/v1/subjects", tags=["gallery"])
    Reader = Annotated[Caller, require(Role.auditor, Role.eraser)]
    Eraser = Annotated[Caller, require(Role.eraser)]

    def with_signature(receipt: dict[str, Any]) -> dict[str, Any]:
        return {"receipt": receipt, "signature_valid": verify(receipt, gallery_keys(settings, create=False))}

    @router.get("", summary="The enrolled subjects (no biometric data)")
    async def list_subjects(_: Reader, watchlist: str | None = None) -> list[dict[str, Any]]:
        return subjects(await points(settings), watchlist)

    @router.get(
        "/{subject_id}", summary="One subject's gallery points: what was enrolled, when, by whom, under which consent"
    )
    async def show(subject_id: str, _: Reader) -> dict[str, Any]:
        pts = by_subject(await points(settings)).get(subject_id)
        if not pts:
            raise Problem(404, "not-found", f"no subject {subject_id!r} in the gallery")
        return {"subject_id": subject_id, "points": [_point(p) for p in sorted(pts, key=lambda p: p["enrolled_at"])]}

    @router.delete(
        "/{subject_id}", status_code=202, summary="Erase a subject: keys destroyed, points removed, a signed receipt"
    )
    async def erase(
        subject_id: str,
        reason: Annotated[str, Query(min_length=3, max_length=500, description="why: the request or its reference")],
        response: Response,
        who: Eraser,
        wait: Annotated[float, Query(ge=0, le=settings.api_wait_max_s)] = 0.0,
    ) -> dict[str, Any]:
        """Answers 202 with the request and its receipt's URL, or with `?wait` the receipt (200)
        once every matcher has erased the subject. Erasing an erased subject gives its receipt."""
        url = f"/v1/subjects/{subject_id}/erasure-receipt"
        response.headers["Location"] = url
        if subject_id not in by_subject(await points(settings)):
            done = (await receipts(settings)).get(subject_id)
            if done is None:
                raise Problem(404, "not-found", f"no subject {subject_id!r} in the gallery (nothing to erase)")
            response.status_code = 200
            return with_signature(done)
        request = await request_erasure(settings, subject_id, reason, who.name, f"token:{who.name}")
        log.info("erasure_requested", subject_id=subject_id, request_id=request["request_id"], by=who.name)
        receipt = await receipt_for(settings, request, wait) if wait else None
        if receipt is not None:
            response.status_code = 200
            return with_signature(receipt)
        return {"request": request, "receipt_url": url}

    @router.get("/{subject_id}/erasure-receipt", summary="The signed receipt of a subject's erasure")
    async def receipt(subject_id: str, _: Reader) -> dict[str, Any]:
        done = (await receipts(settings)).get(subject_id)
        if done is None:
            raise Problem(404, "not-found", f"no erasure receipt for {subject_id!r} (yet)")
        return with_signature(done)

    return Routes(router)
