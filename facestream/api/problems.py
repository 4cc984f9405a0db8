"""Errors as RFC 9457 problem details: one JSON shape for every error the API returns.

`{"type", "title", "status", "detail"}` and, for a body that does not validate, `errors`: one
`{"field", "message"}` per problem, the field as a dotted path into the body (`image.sha256`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
BASE = "https://facestream.dev/problems/"
TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Not allowed for this token",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    503: "Unavailable",
}


class Problem(Exception):
    """An error to answer with: `kind` is the last part of its type URI."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail
        self.errors = errors
        self.headers = headers or {}


def body(status: int, kind: str, detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": BASE + kind,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors:
        out["errors"] = errors
    return out


def response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        body(problem.status, problem.kind, problem.detail, problem.errors),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=problem.headers,
    )


def field_of(location: tuple[Any, ...] | list[Any]) -> str:
    """`("body", "image", "sha256")` → `image.sha256` (the part of the request is implied)."""
    parts = [str(p) for p in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


# Who made a request is its token's name: a body may not say it.
IDENTITY_FIELDS = ("requester", "enrolled_by", "requested_by", "reviewer", "created_by")


def _error(error: Any) -> dict[str, str]:
    kind, location = error.get("type"), error.get("loc", ())
    if kind == "json_invalid":  # the location is a character offset, not a field
        return {"field": "body", "message": f"not valid JSON (at character {location[-1] if location else '?'})"}
    name = field_of(location)
    if kind == "extra_forbidden" and name.rsplit(".", 1)[-1] in IDENTITY_FIELDS:
        return {"field": name, "message": "set from the token that makes the request; leave it out"}
    return {"field": name, "message": str(error.get("msg", ""))}


def install(app: FastAPI) -> None:
    """Answer every error, ours, FastAPI's and Starlette's, as a problem."""

    async def problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return response(exc)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [_error(e) for e in exc.errors()]
        names = ", ".join(sorted({e["field"] for e in errors}))
        return response(Problem(422, "invalid-request", f"invalid: {names}", errors))

    async def http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return response(Problem(exc.status_code, kind, str(exc.detail), headers=dict(exc.headers or {})))

    app.add_exception_handler(Problem, problem)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http)
