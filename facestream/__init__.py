"""facestream: streaming face matching on Kafka.

Consented, attributed enrolment; every search audited; every result a candidate list for
human review, delivered by signed webhook.

This package is the platform every service uses, grouped by responsibility:

- `config`: settings, validated when loaded; `errors`: every error, one hierarchy;
- `contracts/`: the JSON Schemas of every event (package data), validation, ids, timestamps;
- `io/`: Kafka topics and clients, the SSRF-guarded HTTP client, small HTTP servers, the local broker;
- `runtime/`: the faust app and its thin agents, the stage interface, model processes, workers;
- `ops/`: structured logs, metrics, consumer lag, the operations endpoint and dashboard;
- `cli/`: the `facestream` command's platform commands;
- `client`: building and publishing submissions (what an upstream system does);
- `models`: the face model files, sha256-checked; `webhooks`: verifying a delivery (receivers).

The services live in `facestream.services` (the top-level `services/` folder). The public API is
small: settings, the webhook verification helper and the errors; the rest may change.
"""

from facestream.config import Settings, load_settings
from facestream.errors import ConfigError, FacestreamError, RejectedEvent
from facestream.webhooks import InvalidWebhook, verify_webhook

__all__ = [
    "ConfigError",
    "FacestreamError",
    "InvalidWebhook",
    "RejectedEvent",
    "Settings",
    "load_settings",
    "verify_webhook",
]
__version__ = "0.1.0"
