"""Deterministic identifiers: a redelivered event must produce the same ids downstream, so a
gallery point or a webhook is never duplicated by at-least-once delivery."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6c1b0f9e-6a53-4b8e-9f0e-2f3c1d6a7e51")


def event_id(stage: str, image_id: str, face_index: int | None = None) -> str:
    """Id of the event a stage emits for one image (and face)."""
    suffix = "" if face_index is None else f"/{face_index}"
    return str(uuid.uuid5(_NAMESPACE, f"{stage}/{image_id}{suffix}"))


def point_id(subject_id: str, image_id: str, face_index: int) -> str:
    """Gallery point id of an enrolment: stable across redelivery of the same enrolment."""
    return str(uuid.uuid5(_NAMESPACE, f"enroll/{subject_id}/{image_id}/{face_index}"))


def webhook_id(match_event_id: str) -> str:
    """Standard Webhooks `webhook-id`, derived from the match event so retries keep it."""
    return f"msg_{match_event_id.replace('-', '')}"
