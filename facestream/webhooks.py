"""Standard Webhooks signing for the notifier, and the verification helper for receivers.

A receiver verifies a delivery in a few lines::

    from facestream import verify_webhook
    event = verify_webhook(secret, body_bytes, request_headers)  # raises InvalidWebhook

De-duplicate on the `webhook-id` header: it is derived from the match event id and stays the
same across retries and redeliveries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from facestream.errors import FacestreamError


class InvalidWebhook(FacestreamError):
    """Missing headers, a timestamp outside 5 minutes, or no signature that verifies."""


def sign_headers(
    secrets: str | Sequence[str], msg_id: str, body: bytes, when: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed with each of `secrets` (``whsec_…``).
    During a secret rotation there are several: the signature header then lists one signature per
    secret, space-separated, and a receiver holding either secret verifies the delivery."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    if not keys:
        raise ValueError("no signing secret")
    text = body.decode()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": " ".join(Webhook(k).sign(msg_id, when, text) for k in keys),
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
