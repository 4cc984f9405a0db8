"""Standard Webhooks signing for the notifier, and the verification helper for receivers.

A receiver verifies a delivery in a few lines::

    from facestream import verify_webhook
    event = verify_webhook(secret, body_bytes, request_headers)  # raises InvalidWebhook

De-duplicate on the `webhook-id` header: it is derived from the match event id and stays the
same across retries and redeliveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from facestream.errors import FacestreamError


class InvalidWebhook(FacestreamError):
    """Missing headers, a timestamp outside 5 minutes, or no signature that verifies."""


def sign_headers(secret: str, msg_id: str, body: bytes, when: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for `body` signed with `secret` (``whsec_…``)."""
    when = when or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when.astimezone(UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def verify_webhook(secret: str, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The delivered event if its signature verifies with `secret`; raises `InvalidWebhook`."""
    try:
        event = Webhook(secret).verify(body, dict(headers))
    except WebhookVerificationError as exc:
        raise InvalidWebhook(str(exc)) from exc
    if not isinstance(event, dict):
        raise InvalidWebhook("payload is not a JSON object")
    return event
