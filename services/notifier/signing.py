"""Standard Webhooks signing of deliveries (receivers verify with `facestream.verify_webhook`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


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
