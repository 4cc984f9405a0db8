"""Webhook payloads, signatures and what each HTTP answer means, against real HTTP receivers on
loopback. The delivery engine on Kafka is tested in tests/test_delivery.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from facestream import contracts
from facestream.config import DEFAULT_WEBHOOK_SCHEDULE
from facestream.contracts import ids
from facestream.io.net import guarded_client
from facestream.services.notifier.logic import attempt, job_for, judge, next_delay, payload_for, retry_after
from facestream.services.notifier.signing import sign_headers
from facestream.services.notifier.subscriptions import Subscription
from facestream.webhooks import InvalidWebhook, verify_webhook
from tests.helpers import Server, hang, match_result, respond

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another secret, not the right one").decode()
LOOPBACK = ("127.0.0.1",)
DAY = 86400.0


def match_event(status: str = "match", candidates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    default = [
        {"subject_id": "alice", "watchlist": "missing", "score": 0.71, "rank": 1},
        {"subject_id": "bob", "watchlist": "staff", "score": 0.52, "rank": 2},
    ]
    event = match_result("img-1", default if candidates is None else candidates, status=status)
    return {**event, "embedding_must_not_leak": [0.1, 0.2]}


def sub(name: str = "cases", url: str = "http://x", **kwargs: Any) -> Subscription:
    return Subscription.new(name, url, SECRET, **{"all_watchlists": not kwargs.get("watchlists"), **kwargs})


def test_payload_is_thin_filtered_and_bounded_in_time() -> None:
    everyone = sub("all")
    payload = payload_for(match_event(), everyone, DAY)
    assert payload is not None
    assert payload["case_ref"] == "CASE-5"
    assert payload["type"] == "face.match.candidates"
    assert (payload["occurred_at"], payload["expires_at"]) == ("2026-01-01T00:00:01Z", "2026-01-02T00:00:01.000Z")
    assert [(c["subject_id"], c["rank"]) for c in payload["candidates"]] == [("alice", 1), ("bob", 2)]
    assert payload["threshold"] == 0.44
    assert payload["operating_point"]["false_positive_identification_rate"] == 0.01
    assert payload["review"].startswith("candidate")
    text = orjson.dumps(payload).decode()
    assert "embedding" not in text
    assert "intent" not in text
    assert "purpose" not in text
    staff = sub("staff", watchlists=("staff",))
    assert [c["subject_id"] for c in payload_for(match_event(), staff, DAY)["candidates"]] == ["bob"]  # type: ignore[index]
    assert payload_for(match_event(), sub("hi", min_score=0.9), DAY) is None
    assert payload_for(match_event(), sub("types", event_types=("face.match.candidates",)), DAY) is not None
    assert payload_for(match_event("no_match", []), everyone, DAY) is None


def test_job_carries_a_webhook_id_derived_from_the_match() -> None:
    match = match_event()
    job = job_for(match, sub(), payload_for(match, sub(), DAY) or {})
    assert job["webhook_id"] == ids.webhook_id(match["event_id"])
    assert job["attempt"] == 0
    assert job["subscription"] == "cases"
    contracts.validate("webhook.delivery", job)


def test_signatures_verify_and_tampering_fails() -> None:
    body = b'{"event_id": "e1"}'
    headers = sign_headers(SECRET, "msg_1", body)
    assert verify_webhook(SECRET, body, headers) == {"event_id": "e1"}
    with pytest.raises(InvalidWebhook):
        verify_webhook(OTHER, body, headers)
    with pytest.raises(InvalidWebhook):
        verify_webhook(SECRET, body + b" ", headers)
    stale = sign_headers(SECRET, "msg_1", body, when=datetime.fromtimestamp(time.time() - 3600))
    with pytest.raises(InvalidWebhook, match="old"):
        verify_webhook(SECRET, body, stale)


def test_during_a_rotation_either_secret_verifies() -> None:
    body = b'{"event_id": "e1"}'
    headers = sign_headers([SECRET, OTHER], "msg_1", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify_webhook(SECRET, body, headers) == verify_webhook(OTHER, body, headers) == {"event_id": "e1"}


@pytest.mark.parametrize(
    ("status", "outcome", "reason"),
    [
        (200, "delivered", ""),
        (204, "delivered", ""),
        (301, "dead", "redirect"),
        (307, "dead", "redirect"),
        (400, "dead", "rejected"),
        (401, "dead", "rejected"),
        (404, "dead", "rejected"),
        (408, "retry", "http_408"),
        (410, "gone", "gone"),
        (429, "retry", "http_429"),
        (500, "retry", "http_500"),
        (502, "retry", "http_502"),
        (503, "retry", "http_503"),
    ],
)
def test_what_each_status_means(status: int, outcome: str, reason: str) -> None:
    verdict = judge(status, httpx.Headers(), time.time())
    assert (verdict.outcome, verdict.reason) == (outcome, reason)


def test_retry_after_seconds_or_date_capped() -> None:
    now = time.time()
    assert retry_after("7", now) == 7
    when = format_datetime(datetime.fromtimestamp(now + 120, UTC), usegmt=True)
    assert 118 <= (retry_after(when, now) or 0) <= 121
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None
    assert retry_after("99999999", now) == 86400
    assert retry_after("-5", now) == 0


def test_schedule_tiers_and_retry_after_as_a_minimum() -> None:
    schedule = DEFAULT_WEBHOOK_SCHEDULE
    assert len(schedule) == 10
    assert schedule[:3] == (0, 5, 300)
    assert next_delay(schedule, 1, None) == 5  # after the first (immediate) attempt
    assert next_delay(schedule, 2, None) == 300
    assert next_delay(schedule, 9, None) == 86400
    assert next_delay(schedule, 10, None) is None  # exhausted
    assert next_delay(schedule, 1, 60) == 300  # the first tier at least Retry-After long
    assert next_delay(schedule, 1, 2) == 5
    assert next_delay(schedule, 1, 10**6) == 86400


async def test_attempt_signs_and_judges_real_answers() -> None:
    async with (
        Server({"/ok": respond(204), "/busy": respond(429, headers={"Retry-After": "3"})}) as server,
        guarded_client(LOOPBACK, 2.0) as client,
    ):
        match = match_event()
        ok = sub(url=server.url("/ok"))
        job = job_for(match, ok, payload_for(match, ok, DAY) or {})
        assert (await attempt(client, ok, job)).outcome == "delivered"
        busy = await attempt(client, sub(url=server.url("/busy")), job)
    assert (busy.outcome, busy.status, busy.retry_after_s) == ("retry", 429, 3)
    for _, headers, body in server.seen:
        assert headers["webhook-id"] == ids.webhook_id(match["event_id"])
        assert verify_webhook(SECRET, body, headers)["event_id"] == match["event_id"]


async def test_timeouts_retry_and_redirects_are_not_followed() -> None:
    async with (
        Server(
            {"/slow": hang(2), "/moved": respond(307, headers={"Location": "/elsewhere"}), "/elsewhere": respond(204)}
        ) as server,
        guarded_client(LOOPBACK, 0.3) as client,
    ):
        job = job_for(match_event(), sub(), payload_for(match_event(), sub(), DAY) or {})
        started = time.monotonic()
        slow = await attempt(client, sub(url=server.url("/slow")), job)
        assert (slow.outcome, slow.reason) == ("retry", "timeout")
        assert time.monotonic() - started < 2
        moved = await attempt(client, sub(url=server.url("/moved")), job)
        assert (moved.outcome, moved.reason, moved.status) == ("dead", "redirect", 307)
    assert not any(path == "/elsewhere" for path, _, _ in server.seen)


async def test_private_endpoints_are_refused_without_the_allow_list() -> None:
    async with Server({"/hook": respond(204)}) as server, guarded_client((), 2.0) as client:
        job = job_for(match_event(), sub(), payload_for(match_event(), sub(), DAY) or {})
        refused = await attempt(client, sub(url=server.url("/hook")), job)
        assert (refused.outcome, refused.reason) == ("dead", "unsafe_destination")
        assert server.seen == []


async def test_an_endless_answer_body_is_never_read() -> None:
    """A receiver that answers 200 and then streams forever: the attempt is judged on the status
    alone and returns at once, without buffering what the receiver sends."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b"x" * 65536)
                await asyncio.sleep(0.01)
        return response

    async with Server({"/hook": endless}) as server, guarded_client(LOOPBACK, 2.0) as client:
        job = job_for(match_event(), sub(), payload_for(match_event(), sub(), DAY) or {})
        started = time.monotonic()
        verdict = await attempt(client, sub(url=server.url("/hook")), job)
        assert verdict.outcome == "delivered"
        assert time.monotonic() - started < 1.5
