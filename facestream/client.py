"""Building and publishing image submissions: what an upstream system does, in Python."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from facestream import contracts
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso


def image_ref(path: Path, settings: Settings, inline: bool | None = None) -> dict[str, str]:
    """How a local photo travels. Kafka carries events, not blobs: a claim check (file URI +
    sha256) when the workers can read the file (it lies under `image_roots`), else inline base64
    up to `inline_max_bytes`. `inline=True/False` forces the choice."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    resolved = path.resolve()
    readable = any(resolved.is_relative_to(root.resolve()) for root in settings.image_roots)
    if inline is None:
        inline = not readable
    if not inline:
        return {"uri": resolved.as_uri(), "sha256": digest}
    if len(data) > settings.inline_max_bytes:
        raise ValueError(f"{path}: {len(data)} bytes is over inline_max_bytes; put it under image_roots")
    return {"data_b64": base64.b64encode(data).decode(), "sha256": digest}


def search_intent(purpose: str, case_ref: str, requester: str, watchlists: list[str] | None = None) -> dict[str, Any]:
    intent: dict[str, Any] = {"kind": "search", "purpose": purpose, "case_ref": case_ref, "requester": requester}
    if watchlists:
        intent["watchlists"] = watchlists
    return intent


def enroll_intent(
    subject_id: str,
    watchlist: str,
    *,
    lawful_basis: str,
    consent_ref: str,
    retain_until: str,
    source_attestation: str,
    enrolled_by: str,
    face_hint: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """An enrolment's intent. `face_hint` names the subject's face when the photo holds several
    equally likely ones: {"point": [x, y]} within it or {"box": [x, y, w, h]} around it, as
    fractions of the photo's width and height."""
    intent: dict[str, Any] = {
        "kind": "enroll",
        "subject_id": subject_id,
        "watchlist": watchlist,
        "consent": {
            "lawful_basis": lawful_basis,
            "consent_ref": consent_ref,
            "retain_until": retain_until,
            "source_attestation": source_attestation,
            "enrolled_by": enrolled_by,
        },
    }
    if face_hint is not None:
        intent["face_hint"] = face_hint
    return intent


def submission(
    image_id: str, image: dict[str, str], intent: dict[str, Any], source: str, captured_at: str | None = None
) -> dict[str, Any]:
    event = {
        "schema_version": 1,
        "event_type": "image.submitted",
        "image_id": image_id,
        "trace_id": uuid.uuid4().hex,
        "source": source,
        "captured_at": captured_at or now_iso(),
        "submitted_at": now_iso(),
        "image": image,
        "intent": intent,
    }
    contracts.validate("image.submitted", event)
    return event


async def publish(producer: AIOKafkaProducer, settings: Settings, event: dict[str, Any]) -> Any:
    """Send one submission keyed by its image id; returns the delivery future."""
    return await producer.send(
        settings.topic("images"),
        contracts.dumps(event),
        key=event["image_id"].encode(),
        headers=[("trace-id", event["trace_id"].encode())],
    )
