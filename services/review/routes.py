"""Reviews in the HTTP API: pending matches, one match with its candidates' review, the probe
crop, decisions; and the review page that drives them."""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.

from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import Field

from facestream.api import Caller, Problem, Role, Routes, Strict, require
from facestream.config import Settings
from facestream.services.review.board import Board, DecisionRefused

PAGE = files("facestream.services.review") / "static" / "review.html"


class DecisionIn(Strict):
    subject_id: str = Field(min_length=1, max_length=128, description="the candidate decided on")
    decision: Literal["confirm", "reject"]
    note: str = Field("", max_length=500, description="why, in the reviewer's words")


def routes(settings: Settings) -> Routes:
    board = Board(settings)
    router = APIRouter(tags=["reviews"])
    Reader = Annotated[Caller, require(Role.reviewer, Role.auditor)]
    Reviewer = Annotated[Caller, require(Role.reviewer)]

    def refused(exc: DecisionRefused) -> Problem:
        kind = {404: "not-found", 409: "conflict"}.get(exc.status, "refused")
        return Problem(exc.status, kind, str(exc))

    @router.get("/v1/reviews", summary="Matches with a candidate not yet confirmed or rejected, oldest first")
    async def pending(_: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return board.pending(limit)

    @router.get(
        "/v1/reviews/{match_event_id}", summary="One match: its candidates, scores, ranks, operating point and review"
    )
    async def show(match_event_id: str, _: Reader) -> dict[str, Any]:
        try:
            return board.show(match_event_id)
        except DecisionRefused as exc:
            raise refused(exc) from None

    @router.get(
        "/v1/reviews/{match_event_id}/crop",
        summary="The probe face (JPEG) while the crops topic keeps it; every fetch is audited",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def crop(match_event_id: str, who: Reviewer) -> Response:
        data = await board.crop(match_event_id, f"token:{who.name}")
        if data is None:
            raise Problem(404, "not-found", "no probe crop for this match (never made, or no longer kept)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @router.post(
        "/v1/reviews/{match_event_id}/decisions",
        status_code=201,
        summary="Confirm or reject a candidate; two different reviewers confirm, one rejection is final",
    )
    async def decide(match_event_id: str, body: DecisionIn, who: Reviewer) -> dict[str, Any]:
        try:
            return await board.decide(match_event_id, body.subject_id, body.decision, f"token:{who.name}", body.note)
        except DecisionRefused as exc:
            raise refused(exc) from None

    @router.get("/review", include_in_schema=False)
    async def page() -> HTMLResponse:
        # The page itself holds no data: it asks the operations above with the reviewer's token.
        return HTMLResponse(PAGE.read_text(), headers={"Cache-Control": "no-store"})

    return Routes(router, starts=[board.start], stops=[board.stop])
