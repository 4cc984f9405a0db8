"""Webhook payloads and delivery against real HTTP receivers on loopback."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest

from facestream import ids
from facestream.config import Settings, Subscription
from facestream.errors import DeliveryFailed
from facestream.net import guarded_client
from facestream.pipeline import Record
from facestream.webhooks import InvalidWebhook, sign_headers, verify_webhook
from services.notifier.logic import deliver, payload_for
from services.notifier.stage import NotifierStage
from tests.helpers import Server, hang, respond

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another secret, not the right one").decode()
LOOPBACK = ("127.0.0.1",)


def match_event(status: str = "match", candidates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_type": "match.result",
        "event_id": ids.event_id("match", "img-1", 0),
        "image_id": "img-1",
        "trace_id": "trace-1",
        "status": status,
        "face_index": 0,
        "face_count": 1,
        "candidates": candidates
        if candidates is not None
        else [
            {"subject_id": "alice", "watchlist": "missing", "score": 0.71, "rank": 1},
            {"subject_id": "bob", "watchlist": "staff", "score": 0.52, "rank": 2},
        ],
        "threshold": 0.44,
        "operating_point": {"false_positive_identification_rate": 0.01, "calibration": "devset"},
        "model": {"name": "sface", "version": "2021dec"},
        "gallery": {"name": "faces", "size": 2},
        "intent": {"kind": "search", "purpose": "find", "case_ref": "CASE-5", "requester": "r"},
        "review": "candidate: investigative lead, requires human confirmation",
        "source": "cam",
        "captured_at": "2026-01-01T00:00:00Z",
        "occurred_at": "2026-01-01T00:00:01Z",
        "embedding_must_not_leak": [0.1, 0.2],
    }


def test_payload_is_thin_and_filtered() -> None:
    everyone = Subscription("all", "http://x", SECRET)
    payload = payload_for(match_event(), everyone)
    assert payload is not None
    assert payload["case_ref"] == "CASE-5"
    assert len(payload["candidates"]) == 2
    assert payload["review"].startswith("candidate")
    text = orjson.dumps(payload).decode()
    assert "embedding" not in text
    assert "intent" not in text
    assert "purpose" not in text
    staff = Subscription("staff", "http://x", SECRET, watchlists=("staff",))
    assert [c["subject_id"] for c in payload_for(match_event(), staff)["candidates"]] == ["bob"]  # type: ignore[index]
    assert payload_for(match_event(), Subscription("hi", "http://x", SECRET, min_score=0.9)) is None
    assert payload_for(match_event("no_match", []), everyone) is None


def test_signatures_verify_and_tampering_fails() -> None:
    body = b'{"event_id": "e1"}'
    headers = sign_headers(SECRET, "msg_1", body)
    assert verify_webhook(SECRET, body, headers) == {"event_id": "e1"}
    with pytest.raises(InvalidWebhook):
        verify_webhook(OTHER, body, headers)
    with pytest.raises(InvalidWebhook):
        verify_webhook(SECRET, body + b" ", headers)
    stale = sign_headers(SECRET, "msg_1", body, when=__import__("datetime").datetime.fromtimestamp(time.time() - 3600))
    with pytest.raises(InvalidWebhook, match="old"):
        verify_webhook(SECRET, body, stale)


async def test_delivery_is_signed_with_a_stable_id_across_retries() -> None:
    attempts = {"n": 0}

    async def flaky(request: Any) -> Any:
        attempts["n"] += 1
        return await respond(503 if attempts["n"] < 3 else 204)(request)

    async with Server({"/hook": flaky}) as server:
        sub = Subscription("cases", server.url("/hook"), SECRET)
        payload = payload_for(match_event(), sub)
        assert payload is not None
        async with guarded_client(LOOPBACK, 2.0) as client:
            assert await deliver(client, sub, payload, attempts=3, backoff_s=0.01) == 204
    assert len(server.seen) == 3
    ids_seen = {headers["webhook-id"] for _, headers, _ in server.seen}
    assert ids_seen == {ids.webhook_id(match_event()["event_id"])}
    for _, headers, body in server.seen:
        assert verify_webhook(SECRET, body, headers)["event_id"] == match_event()["event_id"]


@pytest.mark.parametrize(("status", "calls"), [(400, 1), (410, 1), (500, 3), (429, 3)])
async def test_failing_receivers(status: int, calls: int) -> None:
    async with Server({"/hook": respond(status)}) as server:
        sub = Subscription("cases", server.url("/hook"), SECRET)
        async with guarded_client(LOOPBACK, 2.0) as client:
            with pytest.raises(DeliveryFailed) as info:
                await deliver(client, sub, payload_for(match_event(), sub) or {}, attempts=3, backoff_s=0.01)
    assert info.value.status == status
    assert len(server.seen) == calls


async def test_slow_receiver_times_out_and_redirects_are_not_followed() -> None:
    async with (
        Server(
            {"/slow": hang(2), "/moved": respond(307, headers={"Location": "/elsewhere"}), "/elsewhere": respond(204)}
        ) as server,
        guarded_client(LOOPBACK, 0.3) as client,
    ):
        slow = Subscription("slow", server.url("/slow"), SECRET)
        started = time.monotonic()
        with pytest.raises(DeliveryFailed, match="Timeout"):
            await deliver(client, slow, payload_for(match_event(), slow) or {}, attempts=2, backoff_s=0.01)
        assert time.monotonic() - started < 3
        moved = Subscription("moved", server.url("/moved"), SECRET)
        with pytest.raises(DeliveryFailed, match="307"):
            await deliver(client, moved, payload_for(match_event(), moved) or {}, attempts=2, backoff_s=0.01)
    assert not any(path == "/elsewhere" for path, _, _ in server.seen)


async def test_private_endpoints_are_refused_without_the_allow_list() -> None:
    async with Server({"/hook": respond(204)}) as server:
        sub = Subscription("cases", server.url("/hook"), SECRET)
        async with guarded_client((), 2.0) as client:
            with pytest.raises(DeliveryFailed, match="refused"):
                await deliver(client, sub, payload_for(match_event(), sub) or {}, attempts=3, backoff_s=0.01)
        assert server.seen == []


async def test_stage_isolates_a_failing_subscriber() -> None:
    async with Server({"/ok": respond(204), "/down": respond(500)}) as server:
        settings = Settings(
            allow_private=LOOPBACK,
            webhook_attempts=2,
            webhook_backoff_s=0.01,
            subscriptions=(
                Subscription("ok", server.url("/ok"), SECRET),
                Subscription("down", server.url("/down"), SECRET),
            ),
        )
        stage = NotifierStage(settings)
        await stage.start()
        event = match_event()
        del event["embedding_must_not_leak"]
        try:
            [outcome] = await stage.process([Record(orjson.dumps(event), b"img-1", "matches", 0, 7)])
        finally:
            await stage.stop()
    assert outcome.error is None
    assert [name for name, _ in outcome.failures] == ["down"]
    assert sum(1 for path, _, _ in server.seen if path == "/ok") == 1
