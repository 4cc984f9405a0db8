"""Webhook payloads and delivery. Payloads are thin: ids, scores, ranks, the operating point and
the case reference. Never embeddings, never image bytes, never consent details."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from facestream import ids
from facestream.config import Subscription
from facestream.errors import DeliveryFailed, UnsafeDestination
from facestream.webhooks import sign_headers

EVENT_TYPE = "face.match.candidates"


def payload_for(match: dict[str, Any], subscription: Subscription) -> dict[str, Any] | None:
    """The webhook body for `subscription`, or None if no candidate passes its filters."""
    wanted = [c for c in match["candidates"] if subscription.wants(c["watchlist"], c["score"])]
    if match["status"] != "match" or not wanted:
        return None
    intent = match["intent"]
    return {
        "type": EVENT_TYPE,
        "event_id": match["event_id"],
        "occurred_at": match["occurred_at"],
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


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


async def deliver(
    client: httpx.AsyncClient,
    subscription: Subscription,
    payload: dict[str, Any],
    *,
    attempts: int,
    backoff_s: float,
) -> int:
    """POST `payload` signed; retries timeouts, 429 and 5xx with exponential backoff.
    Returns the final 2xx status; raises `DeliveryFailed` otherwise."""
    body = orjson.dumps(payload)
    msg_id = ids.webhook_id(payload["event_id"])
    last = "no attempt"
    status: int | None = None
    for attempt in range(1, attempts + 1):
        # Re-signed per attempt (fresh timestamp), same webhook-id: receivers de-duplicate on it.
        headers = {"content-type": "application/json", **sign_headers(subscription.secret, msg_id, body)}
        try:
            response = await client.post(subscription.url, content=body, headers=headers)
            status = response.status_code
            if 200 <= status < 300:
                return status
            last = f"HTTP {status}"
            if not retryable(status):
                break
        except UnsafeDestination as exc:
            raise DeliveryFailed(f"refused: {exc}", attempts=attempt) from exc
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    raise DeliveryFailed(f"{subscription.name}: {last} after {attempt} attempt(s)", status=status, attempts=attempt)
