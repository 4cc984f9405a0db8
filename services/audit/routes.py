"""The audit log in the HTTP API: search and verification, for auditors."""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from facestream.api import Caller, Role, Routes, require
from facestream.config import Settings
from facestream.services.audit import log


def routes(settings: Settings) -> Routes:
    router = APIRouter(prefix="/v1/audit", tags=["audit"])
    Auditor = Annotated[Caller, require(Role.auditor)]

    @router.get("", summary="Who did what: chained audit entries matching every filter given, oldest first")
    async def search(
        _: Auditor,
        case_ref: str | None = None,
        actor: str | None = None,
        subject_id: str | None = None,
        image_id: str | None = None,
        action: str | None = None,
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        query = log.Query(case_ref, actor, subject_id, image_id, action, since, until)
        return await log.search(settings, query, limit)

    @router.get("/verify", summary="Check the whole chain and its signed checkpoints; names the first bad record")
    async def verify(_: Auditor) -> dict[str, Any]:
        verdict = await log.check(settings)
        return {
            "ok": verdict.ok,
            "entries": verdict.records,
            "checkpoints": verdict.checkpoints,
            "unsealed": verdict.unsealed,
            "next_seq": verdict.head.seq,
            "first_bad": None if verdict.problem is None else str(verdict.problem),
        }

    return Routes(router)
