"""Webhook payloads, delivery jobs and what an HTTP answer means for a delivery.

Payloads are thin: ids, scores, ranks, the operating point, the case reference and the times
that bound the result's use. Never embeddings, never image bytes, never consent details.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from facestream.config import WEBHOOK_EVENT_TYPES
from facestream.contracts import ids
from facestream.contracts.timeutil import iso, now_iso, parse_iso
from facestream.errors import UnsafeDestination
from facestream.review import CandidateReview
from facestream.services.notifier.signing import sign_headers
from facestream.services.notifier.subscriptions import Subscription

EVENT_TYPE, ERASED_TYPE, REVIEWED_TYPE = WEBHOOK_EVENT_TYPES
# An erasure notice outlives any match it concerns: a subscriber away for weeks must still purge.
ERASED_TTL_S = 30 * 86400.0


def payload_for(match: dict[str, Any], subscription: Subscription, ttl_s: float) -> dict[str, Any] | None:
    """The webhook body for `subscription`, or None if no candidate passes its filters."""
    if match["status"] != "match" or not subscription.wants_type(EVENT_TYPE):
        return None
    wanted = [c for c in match["candidates"] if subscription.wants(c["watchlist"], c["score"])]
    if not wanted:
        return None
    intent = match["intent"]
    expires = parse_iso(match["occurred_at"]) + timedelta(seconds=ttl_s)
    return {
        "type": EVENT_TYPE,
        "timestamp": match["occurred_at"],  # Standard Webhooks' name for when the event occurred
        "event_id": match["event_id"],
        "occurred_at": match["occurred_at"],
        "expires_at": iso(expires.timestamp()),
        "image_id": match["image_id"],
        "face_index": match["face_index"],
        "case_ref": intent.get("case_ref"),
        "candidates": wanted,
        "threshold": match.get("threshold"),
        "operating_point": match.get("operating_point"),
        "model": match.get("model"),
        "gallery": match.get("gallery"),
        "review": match["review"],
    }


def erased_payload(receipt: dict[str, Any]) -> dict[str, Any]:
    """The `face.subject.erased` body for a subject's erasure receipt: which subject, when, and what
    to do; never the reason given or who asked (they may say more about the person than needed)."""
    expires = parse_iso(receipt["completed_at"]) + timedelta(seconds=ERASED_TTL_S)
    return {
        "type": ERASED_TYPE,
        "timestamp": receipt["completed_at"],
        "event_id": ids.event_id("erased", receipt["request_id"]),
        "occurred_at": receipt["completed_at"],
        "expires_at": iso(expires.timestamp()),
        "subject_id": receipt["subject_id"],
        "erasure_request_id": receipt["request_id"],
        "retention_expired": receipt["reason"] == "retention_expired",
        "action": "purge every copy of match results naming this subject",
    }


def reviewed_payload(decision: dict[str, Any], review: CandidateReview, ttl_s: float) -> dict[str, Any]:
    """The `face.match.reviewed` body: which candidate of which match, the decision, who made it,
    and the candidate's review after it; never the reviewer's note."""
    expires = parse_iso(decision["decided_at"]) + timedelta(seconds=ttl_s)
    return {
        "type": REVIEWED_TYPE,
        "timestamp": decision["decided_at"],
        "event_id": decision["event_id"],
        "occurred_at": decision["decided_at"],
        "expires_at": iso(expires.timestamp()),
        "match_event_id": decision["match_event_id"],
        "image_id": decision["image_id"],
        "case_ref": decision.get("case_ref"),
        "subject_id": decision["subject_id"],
        "watchlist": decision["watchlist"],
        "score": decision["score"],
        "rank": decision["rank"],
        "decision": decision["decision"],
        "reviewer": decision["reviewer"],
        **review.describe(),
    }


def job_for(match: dict[str, Any], subscription: Subscription, payload: dict[str, Any]) -> dict[str, Any]:
    """The webhook.delivery event that carries `payload` (for `match`: a match result, or an
    erasure notice's payload itself) to `subscription` until it is delivered."""
    now = now_iso()
    job: dict[str, Any] = {
        "schema_version": 1,
        "event_type": "webhook.delivery",
        "webhook_id": ids.webhook_id(match["event_id"]),
        "subscription": subscription.name,
        "event_id": match["event_id"],
        "trace_id": match.get("trace_id"),
        "attempt": 0,
        "due_at": now,
        "expires_at": payload["expires_at"],
        "created_at": now,
        "payload": payload,
    }
    if "submitted_at" in match:
        job["submitted_at"] = match["submitted_at"]
    return job


@dataclass(frozen=True)
class Verdict:
    """What one attempt means. `outcome`: delivered, retry, dead (never retried), or gone (410:
    the subscriber asked us to stop; its subscription is disabled)."""

    outcome: str
    reason: str = ""
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None if absent
    or unreadable. Capped at a day, so a hostile value cannot park a delivery forever."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(int(value))
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 86400.0)


def judge(status: int, headers: httpx.Headers, now: float) -> Verdict:
    """2xx delivered; 410 gone; 429, 503 (honouring Retry-After), 408 and other 5xx retried;
    redirects and other 4xx dead-lettered (retrying will not change them)."""
    if 200 <= status < 300:
        return Verdict("delivered", status=status)
    if status == 410:
        return Verdict("gone", "gone", status, "HTTP 410 Gone")
    if status in (429, 503):
        return Verdict(
            "retry", f"http_{status}", status, f"HTTP {status}", retry_after(headers.get("retry-after"), now)
        )
    if status == 408 or status >= 500:
        return Verdict("retry", f"http_{status}", status, f"HTTP {status}")
    if 300 <= status < 400:
        return Verdict(
            "dead", "redirect", status, f"HTTP {status} redirect to {headers.get('location', '?')!r} not followed"
        )
    return Verdict("dead", "rejected", status, f"HTTP {status}")


def judge_error(exc: BaseException) -> Verdict:
    if isinstance(exc, UnsafeDestination):
        return Verdict("dead", "unsafe_destination", error=str(exc))
    if isinstance(exc, httpx.TimeoutException):
        return Verdict("retry", "timeout", error=f"{type(exc).__name__}: timed out")
    return Verdict("retry", "connection_error", error=f"{type(exc).__name__}: {exc}"[:500])


def next_delay(schedule: Sequence[float], attempts_made: int, retry_after_s: float | None) -> float | None:
    """The retry tier (a delay of the schedule) for the next attempt, or None when exhausted.
    `Retry-After` is honoured as a minimum: the first tier at least that long (the last tier if
    none is)."""
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made]
    if retry_after_s is not None and retry_after_s > delay:
        delay = next((d for d in schedule if d >= retry_after_s), schedule[-1])
    return delay


async def attempt(client: httpx.AsyncClient, subscription: Subscription, job: dict[str, Any]) -> Verdict:
    """POST the job's payload once, signed with every active secret of `subscription`."""
    body = orjson.dumps(job["payload"])
    # Re-signed per attempt (fresh timestamp, current secrets), same webhook-id.
    headers = {
        "content-type": "application/json",
        **sign_headers(subscription.signing_secrets(time.time()), job["webhook_id"], body),
    }
    try:
        # Status and headers are all we need: the body is never read, so a receiver cannot make
        # us buffer a large or endless answer.
        async with client.stream("POST", subscription.url, content=body, headers=headers) as response:
            return judge(response.status_code, response.headers, time.time())
    except (httpx.HTTPError, UnsafeDestination) as exc:
        return judge_error(exc)
