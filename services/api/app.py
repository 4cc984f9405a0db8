"""The management API: an ASGI app (FastAPI) over the pipeline's topics.

Every operation names the roles that may call it; a request without a valid token, or with one
that lacks the role, is refused before anything else happens. The identity recorded in what a
request publishes (a search's requester, an enrolment's enroller) is the token's name.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import base64
import binascii
import hashlib
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NoReturn, Protocol

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facestream import audit, client, purposes
from facestream.api import Role, Strict, problems, require
from facestream.api.problems import Problem
from facestream.config import Settings
from facestream.contracts.consent import consent_problem
from facestream.contracts.timeutil import iso_of
from facestream.errors import (
    EnrolmentRejected,
    MalformedEvent,
    PurposeNotAllowed,
    RejectedEvent,
    WatchlistRefused,
)
from facestream.ops.logs import get_logger
from facestream.services.api.limits import Buckets
from facestream.services.api.outcomes import Outcomes
from facestream.services.api.tokens import Token, TokenStore

log = get_logger(__name__)

IMAGE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$"
SHA256 = r"^[0-9a-f]{64}$"


class Publisher(Protocol):
    """Where submissions go (the images topic); returns the partition and offset they landed at."""

    async def __call__(self, event: dict[str, Any]) -> tuple[int, int]: ...


class ImageIn(Strict):
    """The photo: inline (`data_b64`, optional `sha256`) or a claim check (`uri` + `sha256`)."""

    data_b64: str | None = Field(None, min_length=4, description="the image file, base64")
    uri: str | None = Field(None, min_length=1, max_length=2048, description="file://, http(s)://")
    sha256: str | None = Field(None, pattern=SHA256)

    @model_validator(mode="after")
    def _one_way(self) -> "ImageIn":
        if (self.data_b64 is None) == (self.uri is None):
            raise ValueError("give either data_b64 or uri")
        if self.uri is not None and self.sha256 is None:
            raise ValueError("a uri needs its sha256")
        return self


class SubmissionIn(Strict):
    image: ImageIn
    image_id: str | None = Field(None, min_length=1, max_length=128, pattern=IMAGE_ID, description="default: new")
    source: str = Field("api", min_length=1, max_length=128, description="the publishing system or camera")
    captured_at: datetime | None = None


class SearchIn(SubmissionIn):
    purpose: str = Field(min_length=3, max_length=500, description="why this search is made; audited")
    case_ref: str = Field(min_length=1, max_length=128)
    watchlists: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(None, max_length=100)


LawfulBasis = Literal[
    "explicit_consent", "legal_obligation", "vital_interests", "public_task", "law_enforcement", "legal_claims"
]


class ConsentIn(Strict):
    lawful_basis: LawfulBasis
    consent_ref: str = Field(min_length=1, max_length=256, description="the signed consent or legal instrument")
    retain_until: str = Field(
        min_length=10, max_length=40, description="a date (YYYY-MM-DD) or an RFC 3339 time; at most max_retention_days"
    )
    source_attestation: str = Field(min_length=3, max_length=500, description="how the photo was obtained")


class FaceHintIn(Strict):
    point: list[float] | None = Field(None, min_length=2, max_length=2)
    box: list[float] | None = Field(None, min_length=4, max_length=4)


class EnrolmentIn(SubmissionIn):
    subject_id: str = Field(min_length=1, max_length=128)
    watchlist: str = Field(min_length=1, max_length=64)
    consent: ConsentIn
    face_hint: FaceHintIn | None = None


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=64)
    roles: list[Role] = Field(min_length=1)
    expires_in_days: float | None = Field(90.0, gt=0, le=3650, description="null: never expires")


class BodyLimit:
    """Refuses a request body over `limit` bytes with a problem (413), before it is read whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise Problem(413, "too-large", f"the body is over {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except Problem:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = problems.response(Problem(413, "too-large", f"the body is over {self.limit} bytes"))
        await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def _image(image: ImageIn, settings: Settings) -> dict[str, str]:
    if image.uri is not None:
        assert image.sha256 is not None
        return {"uri": image.uri, "sha256": image.sha256}
    assert image.data_b64 is not None
    try:
        data = base64.b64decode(image.data_b64, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(
            422,
            "invalid-request",
            "image.data_b64 is not base64",
            [{"field": "image.data_b64", "message": "not base64"}],
        ) from None
    if len(data) > settings.inline_max_bytes:
        raise Problem(
            413, "too-large", f"an inline image is at most {settings.inline_max_bytes} bytes; send a uri instead"
        )
    digest = hashlib.sha256(data).hexdigest()
    if image.sha256 is not None and image.sha256 != digest:
        raise Problem(
            422, "invalid-request", "image.sha256 is not the digest of image.data_b64",
            [{"field": "image.sha256", "message": "does not match the data"}],
        )  # fmt: skip
    return {"data_b64": image.data_b64, "sha256": digest}


def _iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC; a time without a zone is taken as UTC."""
    if value is None:
        return None
    return iso_of(value.replace(tzinfo=UTC) if value.tzinfo is None else value)


_WHERE = re.compile(r" invalid at (\S+): (.*)$", re.S)


def _submission(image_id: str, image: dict[str, str], intent: dict[str, Any], body: SubmissionIn) -> dict[str, Any]:
    """The image.submitted event, checked against its contract (a breach is the caller's: 422,
    naming the body's field: the contract's `intent/consent/x` is the body's `consent.x`)."""
    try:
        return client.submission(image_id, image, intent, body.source, _iso(body.captured_at))
    except MalformedEvent as exc:
        found = _WHERE.search(str(exc))
        where, why = (found.group(1), found.group(2)) if found else ("(root)", str(exc))
        name = "body" if where == "(root)" else where.removeprefix("intent/").replace("/", ".")
        raise Problem(422, "invalid-request", f"invalid: {name}", [{"field": name, "message": why}]) from None


def create_api(
    settings: Settings,
    tokens: TokenStore,
    publish: Publisher,
    outcomes: Outcomes,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The API over `tokens`, publishing with `publish`, answering from `outcomes`, with the other
    services' operations (`routers`, each declaring its roles with `facestream.api.require`)."""
    app = FastAPI(
        title="facestream",
        version="1",
        summary="Consented enrolment, audited search; every result a candidate list for human review.",
        description="Authenticate with `Authorization: Bearer fst_…` (see `facestream tokens create`). "
        "Errors are RFC 9457 problem details. Serve it behind a TLS-terminating ingress.",
    )
    problems.install(app)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    per_token = Buckets(settings.api_rate_per_s, settings.api_burst)
    failures = Buckets(settings.api_auth_failures_per_min / 60.0, settings.api_auth_failures_per_min)

    async def authenticate(
        request: Request, credentials: HTTPAuthorizationCredentials | None, allowed: set[str]
    ) -> Token:
        peer = request.client.host if request.client else "unknown"
        if not failures.has(peer):
            raise Problem(429, "too-many-failures", "too many failed authentications", headers={"Retry-After": "60"})
        token = tokens.verify(credentials.credentials) if credentials is not None else None
        if token is None:
            failures.take(peer)
            # Never the token: who tried, and how it failed.
            log.warning("api_auth_failed", peer=peer, path=request.url.path, presented=credentials is not None)
            raise Problem(
                401, "unauthenticated", "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        if not allowed & set(token.roles):
            log.warning("api_forbidden", token=token.name, path=request.url.path, needs=sorted(allowed))
            raise Problem(403, "forbidden", f"this needs one of the roles {', '.join(sorted(allowed))}")
        if not per_token.take(token.id):
            raise Problem(429, "rate-limited", "this token's request rate is exceeded", headers={"Retry-After": "1"})
        return token

    app.state.authenticate = authenticate

    async def submit(body: SubmissionIn, intent: dict[str, Any], wait: float, response: Response) -> dict[str, Any]:
        image_id = body.image_id or f"api-{uuid.uuid4().hex}"
        event = _submission(image_id, _image(body.image, settings), intent, body)
        outcome = outcomes.expect(event)
        partition, offset = await publish(event)
        outcomes.published(outcome, partition, offset)
        if wait > 0:
            await outcomes.wait(outcome, wait)
        if outcome.state == "pending":
            response.status_code = 202
            response.headers["Location"] = f"/v1/searches/{event['image_id']}"
        return outcome.as_json()

    wait_query = Query(0.0, ge=0, le=settings.api_wait_max_s, description="hold the request up to this many seconds")

    async def refuse(status: int, kind: str, error: RejectedEvent, field: str, intent: dict[str, Any]) -> NoReturn:
        """Answer with a problem naming `field`, once the refusal is audited (who asked, and why not)."""
        asker = intent.get("requester") or intent["consent"]["enrolled_by"]
        entry = audit.entry(
            "refusal",
            asker,
            "api",
            f"api/{uuid.uuid4()}",
            details={"stage": "api", "reason": error.reason, "kind": intent["kind"], "purpose": intent.get("purpose")},
            case_ref=intent.get("case_ref"),
            subject_id=intent.get("subject_id"),
        )
        await audit.send(settings, tokens.producer, entry)
        raise Problem(status, kind, error.detail, [{"field": field, "message": error.detail}])

    @app.post("/v1/searches", status_code=200, tags=["images"], summary="Search the gallery for the faces in a photo")
    async def search(
        body: SearchIn,
        response: Response,
        token: Annotated[Token, require(Role.publisher)],
        wait: float = wait_query,
    ) -> dict[str, Any]:
        """Answers 202 with the image id at once (or, with `?wait`, the outcome when it is ready within
        that time: 200): the candidate list per face, `no_match`, `no_face`, or the rejection."""
        intent = client.search_intent(body.purpose, body.case_ref, token.name, body.watchlists)
        try:
            purposes.search_scope(settings, intent)  # refused here, before anything is published
        except PurposeNotAllowed as exc:
            await refuse(422, "purpose-not-allowed", exc, "purpose", intent)
        return await submit(body, intent, wait, response)

    @app.post("/v1/enrolments", status_code=200, tags=["images"], summary="Enrol a consenting subject's photo")
    async def enrol(
        body: EnrolmentIn,
        response: Response,
        token: Annotated[Token, require(Role.publisher)],
        wait: float = wait_query,
    ) -> dict[str, Any]:
        """The token's name is recorded as the enroller. 202 with the image id, or with `?wait` the
        outcome (`enrolled`, or the rejection and its reason)."""
        consent = body.consent
        intent = client.enroll_intent(
            body.subject_id,
            body.watchlist,
            lawful_basis=consent.lawful_basis,
            consent_ref=consent.consent_ref,
            retain_until=consent.retain_until,
            source_attestation=consent.source_attestation,
            enrolled_by=token.name,
            face_hint=body.face_hint.model_dump(exclude_none=True) if body.face_hint else None,
        )
        problem = consent_problem(intent["consent"], settings.max_retention_days)
        if problem is not None:  # refused before anything is published, as `facestream enroll` does
            rejected = EnrolmentRejected(problem, reason="enrolment_rejected")
            await refuse(422, "invalid-request", rejected, problem.split(" ", 1)[0], intent)
        try:
            purposes.check_enrolment(settings, intent)
        except WatchlistRefused as exc:
            await refuse(422, "watchlist-refused", exc, "watchlist", intent)
        return await submit(body, intent, wait, response)

    @app.get("/v1/searches/{image_id}", tags=["images"], summary="The outcome of a search or an enrolment")
    async def outcome(image_id: str, token: Annotated[Token, require(Role.publisher, Role.auditor)]) -> dict[str, Any]:
        """A publisher sees the outcomes of its own submissions; an auditor sees any."""
        found = outcomes.get(image_id)
        if found is None or (Role.auditor.value not in token.roles and found.requester not in ("", token.name)):
            raise Problem(404, "not-found", f"no recent outcome for {image_id!r}")
        return found.as_json()

    @app.get("/v1/tokens", tags=["tokens"], summary="List the API tokens (never their secrets)")
    async def list_tokens(_: Annotated[Token, require(Role.admin)]) -> list[dict[str, Any]]:
        now = time.time()
        return [t.public(now) for t in tokens.all()]

    @app.post("/v1/tokens", status_code=201, tags=["tokens"], summary="Create a token; its text is shown only here")
    async def create_token(body: TokenIn, who: Annotated[Token, require(Role.admin)]) -> dict[str, Any]:
        expires = None if body.expires_in_days is None else body.expires_in_days * 86400
        roles = [r.value for r in body.roles]
        token, text = await tokens.create(body.name, roles, expires, created_by=f"token:{who.name}")
        log.info("api_token_created", token=token.name, token_id=token.id, roles=list(token.roles), by=who.name)
        return {**token.public(time.time()), "token": text}

    @app.delete("/v1/tokens/{token_id}", tags=["tokens"], summary="Revoke a token, on every API worker")
    async def revoke_token(token_id: str, who: Annotated[Token, require(Role.admin)]) -> dict[str, Any]:
        if tokens.get(token_id) is None:
            raise Problem(404, "not-found", f"no token {token_id!r}")
        token = await tokens.revoke(token_id, actor=f"token:{who.name}")
        log.info("api_token_revoked", token=token.name, token_id=token.id, by=who.name)
        return token.public(time.time())

    for router in routers:
        app.include_router(router)
    return app
