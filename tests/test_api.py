"""The management API, through httpx against the running app (uvicorn on loopback, real Kafka)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from facestream.api import Role
from facestream.config import Settings, load_settings
from facestream.io.kafka import delete_topics, read_topic
from facestream.services.api.outcomes import Outcomes
from facestream.services.api.server import ApiServer
from facestream.services.api.service import SERVICE as API
from facestream.services.api.tokens import TokenStore
from facestream.services.main import SERVICES, ensure_topics
from tests.conftest import ROOT, SAMPLES, sample
from tests.harness import Pipeline
from tests.helpers import RETAIN, api_knows, new_token

# Who may call what: every operation of the OpenAPI is here (checked), and every role is refused
# everywhere else.
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("post", "/v1/searches"): {"publisher"},
    ("post", "/v1/enrolments"): {"publisher"},
    ("get", "/v1/searches/{image_id}"): {"publisher", "auditor"},
    ("get", "/v1/tokens"): {"admin"},
    ("post", "/v1/tokens"): {"admin"},
    ("delete", "/v1/tokens/{token_id}"): {"admin"},
    ("get", "/v1/subscriptions"): {"admin", "auditor"},
    ("post", "/v1/subscriptions"): {"admin"},
    ("get", "/v1/subscriptions/{name}"): {"admin", "auditor"},
    ("patch", "/v1/subscriptions/{name}"): {"admin"},
    ("delete", "/v1/subscriptions/{name}"): {"admin"},
    ("post", "/v1/subscriptions/{name}/rotate-secret"): {"admin"},
    ("get", "/v1/subscriptions/{name}/deliveries"): {"admin", "auditor"},
    ("post", "/v1/subscriptions/{name}/replay"): {"admin"},
    ("post", "/v1/subscriptions/{name}/test"): {"admin"},
    ("get", "/v1/subjects"): {"auditor", "eraser"},
    ("get", "/v1/subjects/{subject_id}"): {"auditor", "eraser"},
    ("delete", "/v1/subjects/{subject_id}"): {"eraser"},
    ("get", "/v1/subjects/{subject_id}/erasure-receipt"): {"auditor", "eraser"},
    ("get", "/v1/audit"): {"auditor"},
    ("get", "/v1/audit/verify"): {"auditor"},
    ("get", "/v1/reviews"): {"reviewer", "auditor"},
    ("get", "/v1/reviews/{match_event_id}"): {"reviewer", "auditor"},
    ("get", "/v1/reviews/{match_event_id}/crop"): {"reviewer"},
    ("post", "/v1/reviews/{match_event_id}/decisions"): {"reviewer"},
}

JSON = {"content-type": "application/json"}


def _settings(**changes: Any) -> Settings:
    prefix = f"a{uuid.uuid4().hex[:10]}"
    values = {"topic_prefix": prefix, "app_id": prefix, "api_port": 0, "image_roots": (SAMPLES,), **changes}
    return load_settings(environment=False, **values)


class Api:
    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{server.port}"
        self.http = httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=30)

    async def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        return await self.http.request(method, path, headers=headers, **kwargs)


async def _start(settings: Settings) -> Api:
    # As a worker builds it: with every service's operations.
    assert API.server is not None
    server = API.server(settings, SERVICES)
    assert isinstance(server, ApiServer)
    await server.start()
    return Api(server)


@pytest.fixture
async def api(kafka: str) -> AsyncIterator[Api]:
    # The role table makes three failed authentications per operation from one address: more than
    # the default limit, which test_request_size_and_rates_are_limited checks.
    settings = _settings(api_auth_failures_per_min=1000)
    await ensure_topics(settings)
    running = await _start(settings)
    try:
        yield running
    finally:
        await running.http.aclose()
        await running.server.stop()
        await delete_topics(settings)


async def _token(api: Api, *roles: str, name: str | None = None, days: float | None = 1.0) -> str:
    store = api.server.tokens
    _, text = await store.create(
        name or f"{'-'.join(roles)}-{uuid.uuid4().hex[:6]}", list(roles), days and days * 86400, "t"
    )
    return text


def _inline(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    return {"data_b64": base64.b64encode(data).decode(), "sha256": hashlib.sha256(data).hexdigest()}


def _search_body(path: Path) -> dict[str, Any]:
    return {"image": _inline(path), "purpose": "api test search", "case_ref": "CASE-API"}


def _enrol_body(path: Path) -> dict[str, Any]:
    return {
        "image": _inline(path),
        "subject_id": path.parent.name,
        "watchlist": "test-list",
        "consent": {
            "lawful_basis": "explicit_consent",
            "consent_ref": f"consent/{path.parent.name}",
            "retain_until": RETAIN,
            "source_attestation": "sample photo (MIT), see samples/SOURCES.md",
        },
    }


def _operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m, p) for p, methods in spec["paths"].items() for m in methods]


def _request(method: str, path: str) -> tuple[str, dict[str, Any]]:
    concrete = path.replace("{image_id}", "img-1").replace("{token_id}", "0123456789abcdef")
    concrete = concrete.replace("{name}", "no-such-subscription").replace("{subject_id}", "nobody")
    concrete = concrete.replace("{match_event_id}", "00000000-0000-4000-8000-000000000000")
    if method == "delete" and "{subject_id}" in path:
        concrete += "?reason=test+of+roles"
    bodies = {
        "/v1/subscriptions": {"name": "made-by-test", "url": "https://hooks.invalid/in", "all_watchlists": True},
        "/v1/reviews/{match_event_id}/decisions": {"subject_id": "nobody", "decision": "confirm"},
        "/v1/subscriptions/{name}": {"min_score": 0.5},
        "/v1/subscriptions/{name}/rotate-secret": {"grace_s": 60},
        "/v1/subscriptions/{name}/replay": {},
    }
    if method in ("post", "patch") and path in bodies:
        return concrete, {"json": bodies[path]}
    body = {"json": _search_body(sample("azure_family2_man"))} if path.endswith(("searches", "enrolments")) else {}
    if path == "/v1/enrolments":
        body = {"json": _enrol_body(sample("azure_family2_man"))}
    if path == "/v1/tokens" and method == "post":
        body = {"json": {"name": "made-by-test", "roles": ["auditor"]}}
    return concrete, body


def _is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("https://facestream.dev/problems/")
    return problem


async def test_every_operation_refuses_a_missing_wrong_or_unqualified_token(api: Api) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    operations = _operations(spec)
    assert set(operations) == set(ALLOWED), "every operation has its roles in ALLOWED, and nothing else does"
    tokens = {role.value: await _token(api, role.value) for role in Role}
    forged = tokens["admin"][:-4] + "AAAA"
    for method, path in operations:
        url, body = _request(method, path)
        for token in (None, "not-a-token", forged):
            problem = _is_problem(await api.call(method, url, token, **body), 401)
            assert problem["title"] == "Authentication required"
        for role, token in tokens.items():
            response = await api.call(method, url, token, **body)
            if role in ALLOWED[(method, path)]:
                assert response.status_code not in (401, 403), (method, path, role, response.text)
            else:
                _is_problem(response, 403)
    # The security scheme is part of the contract the page at /docs shows.
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await api.http.get("/docs")).status_code == 200


async def test_subscriptions_are_managed_and_their_secrets_shown_once(api: Api) -> None:
    admin, auditor = await _token(api, "admin"), await _token(api, "auditor")
    body = {"name": "case-system", "url": "https://hooks.invalid/in", "watchlists": ["staff"], "min_score": 0.4}
    created = await api.call("post", "/v1/subscriptions", admin, json=body)
    assert created.status_code == 201, created.text
    secret = created.json()["signing_secret"]
    assert secret.startswith("whsec_")
    shown = (await api.call("get", "/v1/subscriptions/case-system", auditor)).json()
    assert secret not in str(shown)
    assert (shown["watchlists"], shown["min_score"], shown["state"]) == (["staff"], 0.4, "active")
    again = await api.call("post", "/v1/subscriptions", admin, json=body)
    assert "exists" in _is_problem(again, 409)["detail"]
    inside = await api.call("post", "/v1/subscriptions", admin, json={**body, "name": "x", "url": "http://127.0.0.1/"})
    assert "webhook_allow_private" in _is_problem(inside, 422)["detail"]  # the SSRF policy, at registration
    bad_type = await api.call("post", "/v1/subscriptions", admin, json={**body, "name": "y", "event_types": ["nope"]})
    assert [e["field"] for e in _is_problem(bad_type, 422)["errors"]] == ["event_types.0"]
    off = await api.call(
        "patch", "/v1/subscriptions/case-system", admin, json={"state": "disabled", "disabled_reason": "maintenance"}
    )
    assert off.json()["state"] == "disabled"
    replayed = await api.call("post", "/v1/subscriptions/case-system/replay", admin, json={})
    assert _is_problem(replayed, 409)["detail"].startswith("case-system is disabled")
    rotate = await api.call("post", "/v1/subscriptions/case-system/rotate-secret", admin, json={"grace_s": 60})
    rotated = rotate.json()
    plain = await api.call("post", "/v1/subscriptions/case-system/rotate-secret", admin)  # the default grace
    assert plain.status_code == 200, plain.text
    assert rotated["signing_secret"] != secret
    assert [s["expires_at"] is not None for s in rotated["secrets"]] == [True, False]  # the old one expires
    assert len(plain.json()["secrets"]) == 3
    assert (await api.call("delete", "/v1/subscriptions/case-system", admin)).status_code == 204
    _is_problem(await api.call("get", "/v1/subscriptions/case-system", admin), 404)


async def test_malformed_bodies_get_problem_details_naming_the_field(api: Api) -> None:
    token = await _token(api, "publisher")
    body = _search_body(sample("azure_family2_man"))
    del body["case_ref"]
    body["image"]["sha256"] = "not-a-digest"
    problem = _is_problem(await api.call("post", "/v1/searches", token, json=body), 422)
    assert {e["field"] for e in problem["errors"]} == {"case_ref", "image.sha256"}
    wrong = _search_body(sample("azure_family2_man"))
    wrong["image"]["sha256"] = "0" * 64
    problem = _is_problem(await api.call("post", "/v1/searches", token, json=wrong), 422)
    assert problem["errors"] == [{"field": "image.sha256", "message": "does not match the data"}]
    extra = {**_search_body(sample("azure_family2_man")), "requester": "someone else"}  # identity is not a field
    problem = _is_problem(await api.call("post", "/v1/searches", token, json=extra), 422)
    assert problem["errors"] == [
        {"field": "requester", "message": "set from the token that makes the request; leave it out"}
    ]
    broken = await api.call("post", "/v1/searches", token, content=b"{not json", headers=JSON)
    assert [e["field"] for e in _is_problem(broken, 422)["errors"]] == ["body"]
    # Consent is checked before anything is published, as `facestream enroll` does.
    enrol = _enrol_body(sample("azure_family2_man"))
    enrol["consent"]["retain_until"] = "2099-01-01"
    problem = _is_problem(await api.call("post", "/v1/enrolments", token, json=enrol), 422)
    assert [e["field"] for e in problem["errors"]] == ["consent.retain_until"]
    assert "beyond the longest term allowed" in problem["detail"]
    enrol["consent"].update(retain_until=RETAIN, lawful_basis="because")
    problem = _is_problem(await api.call("post", "/v1/enrolments", token, json=enrol), 422)
    assert [e["field"] for e in problem["errors"]] == ["consent.lawful_basis"]


async def test_request_size_and_rates_are_limited(kafka: str) -> None:
    settings = _settings(api_max_body_bytes=4096, api_rate_per_s=0.5, api_burst=3, api_auth_failures_per_min=3)
    await ensure_topics(settings)
    api = await _start(settings)
    try:
        token = await _token(api, "auditor")
        big = await api.call(
            "post", "/v1/searches", token, content=b"x" * 10_000, headers={"content-type": "application/json"}
        )
        _is_problem(big, 413)
        codes = [(await api.call("get", "/v1/searches/none", token)).status_code for _ in range(5)]
        assert codes[0] == 404
        assert 429 in codes  # this token's burst is spent; other tokens are not affected
        other = await _token(api, "auditor")
        assert (await api.call("get", "/v1/searches/none", other)).status_code == 404
        failed = [
            (await api.call("get", "/v1/tokens", "fst_0000000000000000_" + "A" * 43)).status_code for _ in range(5)
        ]
        assert failed[:3] == [401, 401, 401]
        assert failed[-1] == 429  # too many failures from this address: refused before any check
    finally:
        await api.http.aclose()
        await api.server.stop()
        await delete_topics(settings)


async def test_revocation_and_expiry_take_effect_on_every_api_worker(api: Api) -> None:
    other = await _start(api.server.settings)  # a second API worker on the same topics
    try:
        admin = await _token(api, "admin")
        created = await api.call("post", "/v1/tokens", admin, json={"name": "short-lived", "roles": ["auditor"]})
        assert created.status_code == 201
        made = created.json()
        assert made["created_by"].startswith("token:admin-")  # the creator's token name, never a field
        listed = (await api.call("get", "/v1/tokens", admin)).json()
        assert "sha256" not in str(listed)
        assert made["token"] not in str(listed)

        async def status_on(worker: Api, token: str) -> int:
            return (await worker.call("get", "/v1/searches/x", token)).status_code

        async def until(worker: Api, token: str, code: int) -> None:
            for _ in range(100):
                if await status_on(worker, token) == code:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"still not {code} on {worker.url}")

        await until(other, made["token"], 404)  # known on the other worker too
        revoked = await api.call("delete", f"/v1/tokens/{made['id']}", admin)
        assert revoked.json()["state"] == "revoked"
        await until(other, made["token"], 401)
        assert await status_on(api, made["token"]) == 401

        brief = await _token(api, "auditor", days=2 / 86400)
        await until(other, brief, 404)
        await asyncio.sleep(2.1)
        assert await status_on(api, brief) == 401
        assert await status_on(other, brief) == 401
    finally:
        await other.http.aclose()
        await other.server.stop()


async def test_tokens_from_the_command_line(kafka: str, tmp_path: Path) -> None:
    settings = _settings()
    config = tmp_path / "facestream.toml"
    config.write_text(f'topic_prefix = "{settings.topic_prefix}"\napp_id = "{settings.app_id}"\n')

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "facestream.services", "--config", str(config), "tokens", *args],
            capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
        )  # fmt: skip
        return done.stdout

    try:
        made = cli("create", "--name", "ops-admin", "--role", "admin", "--role", "auditor")
        text = made.split("token (shown once, keep it secret): ")[1].strip()
        listed = cli("list")
        assert "ops-admin" in listed
        assert text not in listed
        store = TokenStore(settings, follow=False)
        await store.start()
        try:
            token = store.verify(text)
            assert token is not None
            assert token.roles == ("admin", "auditor")
        finally:
            await store.stop()
        token_id = text.split("_")[1]
        assert '"state": "revoked"' in cli("revoke", token_id)
    finally:
        await delete_topics(settings)


async def test_wait_returns_the_outcome_a_webhook_carries(kafka: str, tmp_path: Path) -> None:
    """Enrol and search through the API of a running worker; the identity in the events is the
    token's name; `?wait` answers with the match event the subscriber's webhook carries."""
    pipeline = Pipeline(tmp_path, [SAMPLES, tmp_path])
    await pipeline.start()
    try:
        _, publisher = await new_token(pipeline.settings, "case-system-7", ["publisher"])
        _, auditor = await new_token(pipeline.settings, "audit-office", ["auditor"])
        _, eraser = await new_token(pipeline.settings, "privacy-office", ["eraser"])
        _, admin = await new_token(pipeline.settings, "ops-admin", ["admin"])
        api = Api.__new__(Api)
        api.url = f"http://127.0.0.1:{pipeline.api_ports['all']}"
        api.http = httpx.AsyncClient(base_url=api.url, trust_env=False, timeout=60)
        tokens = (publisher, auditor, eraser, admin)
        await pipeline.wait_for(lambda: api_knows(api.url, *tokens), what="the API serving, with the new tokens")
        gallery = sorted((SAMPLES / "gallery").rglob("*.jpg"))
        for path in gallery:
            enrolled = await api.call("post", "/v1/enrolments?wait=60", publisher, json=_enrol_body(path))
            assert enrolled.status_code == 200, enrolled.text
            assert len(enrolled.json()["results"]) == 1, enrolled.text
            [result] = enrolled.json()["results"]
            assert result["status"] == "enrolled"
            assert result["intent"]["consent"]["enrolled_by"] == "case-system-7"
        probe = sorted((SAMPLES / "probes" / "azure_family2_man").glob("*.jpg"))[0]
        answered = await api.call("post", "/v1/searches?wait=60", publisher, json=_search_body(probe))
        assert answered.status_code == 200, answered.text
        outcome = answered.json()
        assert outcome["state"] == "done"
        [match] = [r for r in outcome["results"] if r["status"] == "match"]
        assert match["intent"]["requester"] == "case-system-7"
        await pipeline.wait_for(lambda: len(pipeline.receiver.deliveries) >= 1, what="the webhook")
        [delivery] = pipeline.receiver.deliveries
        assert delivery.event["event_id"] == match["event_id"]
        assert delivery.event["candidates"] == match["candidates"]
        later = await api.call("get", f"/v1/searches/{outcome['image_id']}", publisher)
        assert later.json() == outcome
        # The delivery is in the subscription's attempts, for an auditor to read.
        webhook_id = delivery.webhook_id
        attempts = await api.call("get", f"/v1/subscriptions/test-receiver/deliveries?webhook_id={webhook_id}", auditor)
        assert [(a["webhook_id"], a["outcome"]) for a in attempts.json()] == [(webhook_id, "delivered")]
        # A test event, signed with the subscription's secret: the receiver verifies it.
        tested = (await api.call("post", "/v1/subscriptions/test-receiver/test", admin)).json()
        assert (tested["outcome"], tested["http_status"]) == ("delivered", 204)
        assert pipeline.receiver.deliveries[-1].webhook_id == tested["webhook_id"]
        assert pipeline.receiver.deliveries[-1].event["type"] == "webhook.test"
        # The gallery as the API lists it, and an erasure with its signed receipt; the requester is the token.
        listed = (await api.call("get", "/v1/subjects", auditor)).json()
        assert {s["subject_id"] for s in listed} == {p.parent.name for p in gallery}
        shown = (await api.call("get", "/v1/subjects/azure_family2_man", auditor)).json()
        assert shown["points"][0]["consent"]["enrolled_by"] == "case-system-7"
        assert "embedding" not in str(shown)
        erased = await api.call("delete", "/v1/subjects/azure_family2_man?reason=request+DSR-77&wait=60", eraser)
        assert erased.status_code == 200, erased.text
        assert erased.json()["signature_valid"] is True
        assert erased.json()["receipt"]["requested_by"] == "privacy-office"
        assert erased.headers["Location"] == "/v1/subjects/azure_family2_man/erasure-receipt"
        again = await api.call("get", erased.headers["Location"], auditor)
        assert again.json() == erased.json()
        _is_problem(await api.call("get", "/v1/subjects/azure_family2_man", auditor), 404)
        # A photo that cannot be decoded: the outcome is its rejection, with the reason.
        junk = {**_search_body(probe), "image": {"data_b64": base64.b64encode(b"\xff\xd8 not a jpeg").decode()}}
        rejected = (await api.call("post", "/v1/searches?wait=60", publisher, json=junk)).json()
        assert rejected["state"] == "rejected"
        assert rejected["rejection"]["reason"] == "undecodable"
        await api.http.aclose()
    finally:
        await pipeline.stop()


async def test_purpose_and_watchlist_refusals_come_at_once_and_are_audited(kafka: str) -> None:
    declared = [{"name": "staff", "purposes": ["building access review"], "retention_days": 30}]
    settings = _settings(watchlists=declared)
    await ensure_topics(settings)
    api = await _start(settings)
    try:
        token = await _token(api, "publisher", name="desk-7")
        searched = await api.call("post", "/v1/searches", token, json=_search_body(sample("azure_family2_man")))
        problem = _is_problem(searched, 422)
        assert problem["errors"][0]["field"] == "purpose"
        assert "no declared watchlist may be searched for purpose 'api test search'" in problem["detail"]
        enrolled = await api.call("post", "/v1/enrolments", token, json=_enrol_body(sample("azure_family2_man")))
        assert _is_problem(enrolled, 422)["errors"][0]["field"] == "watchlist"  # test-list is not declared
        assert await read_topic(settings, settings.topic("images")) == []  # nothing was published
        entries = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("audit.entries"))]
        refusals = sorted((e["actor"], e["details"]["reason"]) for e in entries if e["action"] == "refusal")
        assert refusals == [("desk-7", "purpose_not_allowed"), ("desk-7", "watchlist_refused")]
    finally:
        await api.http.aclose()
        await api.server.stop()
        await delete_topics(settings)


def test_a_dead_letter_naming_its_submission_reaches_every_api_worker() -> None:
    """A stage that could read the refused event puts its `submitted_at` in the dead letter: an API
    worker that did not publish the submission finds its outcome all the same, shown to auditors
    only (the letter names no submitter). (Records handed in, as `Outcomes.start` reads them.)"""
    settings = _settings()
    outcomes = Outcomes(settings)  # another worker: it never saw the submission
    letter = {
        "stage": "detector",
        "reason": "undecodable",
        "detail": "not an image",
        "image_id": "img-7",
        "submitted_at": "2026-12-02T10:00:00.000Z",
        "source_topic": settings.topic("images"),
        "partition": 2,
        "offset": 9,
        "occurred_at": "2026-12-02T10:00:01.000Z",
    }
    outcomes._record(SimpleNamespace(topic=settings.topic("dlq"), value=orjson.dumps(letter), offset=1))
    found = outcomes.get("img-7")
    assert found is not None
    assert (found.state, found.as_json()["rejection"]["reason"]) == ("rejected", "undecodable")
    assert found.requester == "(unknown)"


def test_a_later_stage_s_dead_letter_ends_its_submission_s_wait() -> None:
    """A refusal after detection (the matcher turning an enrolment down) names the image, not the
    submission's position: it ends the pending outcome of that image submitted before it, and no
    older one's. (The topic is read by `Outcomes.start`; here its records are handed in.)"""
    settings = _settings()
    outcomes = Outcomes(settings)
    event = {"image_id": "img-9", "submitted_at": "2026-12-02T10:00:00.000Z", "intent": {"kind": "enroll"}}
    pending = outcomes.expect(event)
    letter = {
        "stage": "matcher",
        "reason": "enrolment_rejected",
        "detail": "the subject was erased",
        "image_id": "img-9",
        "source_topic": settings.topic("embeddings"),
        "partition": 0,
        "offset": 5,
        "occurred_at": "2026-12-02T09:59:59.000Z",  # before this submission: an older one's
    }

    def record(value: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(topic=settings.topic("dlq"), value=orjson.dumps(value), offset=1)

    outcomes._record(record(letter))
    assert pending.state == "pending"
    outcomes._record(record({**letter, "occurred_at": "2026-12-02T10:00:01.000Z"}))
    assert pending.state == "rejected"
    assert pending.as_json()["rejection"]["reason"] == "enrolment_rejected"
