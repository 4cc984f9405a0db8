"""Deterministic identifiers: a redelivered event must produce the same ids downstream, so a
gallery point or a webhook is never duplicated by at-least-once delivery."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6c1b0f9e-6a53-4b8e-9f0e-2f3c1d6a7e51")


def event_id(stage: str, image_id: str, face_index: int | None = None, image_sha256: str = "") -> str:
    """Id of the event a stage emits for one image (and face). With the image's digest, a
    different image published under an image id already used gets ids of its own (and so its own
    webhook id and crop link), while a redelivery of the same image gets the same ones."""
    suffix = "" if face_index is None else f"/{face_index}"
    content = f"#{image_sha256}" if image_sha256 else ""
    return str(uuid.uuid5(_NAMESPACE, f"{stage}/{image_id}{content}{suffix}"))


def point_id(subject_id: str, image_id: str, face_index: int, image_sha256: str = "") -> str:
    """Gallery point id of an enrolment: stable across redelivery of the same enrolment, and its
    own for another photo under the same image id."""
    content = f"#{image_sha256}" if image_sha256 else ""
    return str(uuid.uuid5(_NAMESPACE, f"enroll/{subject_id}/{image_id}{content}/{face_index}"))


def webhook_id(match_event_id: str) -> str:
    """Standard Webhooks `webhook-id`, derived from the match event so retries keep it."""
    return f"msg_{match_event_id.replace('-', '')}"
