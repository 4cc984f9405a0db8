"""Verifying a webhook delivery, for receivers (the notifier signs: services/notifier/signing.py).

A receiver verifies a delivery in a few lines::

    from facestream import verify_webhook
    event = verify_webhook(secret, body_bytes, request_headers)  # raises InvalidWebhook

De-duplicate on the `webhook-id` header: it is derived from the match event id and stays the
same across retries and redeliveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from facestream.errors import FacestreamError


class InvalidWebhook(FacestreamError):
    """Missing headers, a timestamp outside 5 minutes, or no signature that verifies."""


def verify_webhook(secret: str, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The delivered event if its signature verifies with `secret`; raises `InvalidWebhook`."""
    try:
        event = Webhook(secret).verify(body, dict(headers))
    except WebhookVerificationError as exc:
        raise InvalidWebhook(str(exc)) from exc
    if not isinstance(event, dict):
        raise InvalidWebhook("payload is not a JSON object")
    return event
