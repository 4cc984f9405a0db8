"""facestream: streaming face matching on Kafka.

Consented, attributed enrolment; every search audited; every result a candidate list for
human review, delivered by signed webhook. The public API is small: configuration, the event
contracts, the webhook verification helper and the errors. Everything else is private to the
services and may change.
"""

from facestream.config import Settings, Subscription, load_settings
from facestream.errors import FacestreamError, RejectedEvent
from facestream.webhooks import verify_webhook

__all__ = [
    "FacestreamError",
    "RejectedEvent",
    "Settings",
    "Subscription",
    "load_settings",
    "verify_webhook",
]
__version__ = "0.1.0"
