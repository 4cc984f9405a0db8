"""The matcher as the platform runs it: consumes `embeddings`, searches or enrols; owns the
gallery topic (the system of record its replicas build their indexes from)."""

from __future__ import annotations

from concurrent.futures import Executor

from facestream.config import Settings
from facestream.io.acls import Access
from facestream.io.kafka import DAY_MS, MiB, TopicSpec
from facestream.runtime.service import Service
from facestream.services.matcher import operating
from facestream.services.matcher.cli import add_parsers
from facestream.services.matcher.routes import routes
from facestream.services.matcher.stage import MatcherStage


def _stage(settings: Settings, executor: Executor) -> MatcherStage:
    return MatcherStage(settings)


def _check(settings: Settings) -> None:
    operating.load(settings.calibration_file)  # the matcher reads it at start: a ConfigError naming it


def _topics(settings: Settings) -> list[TopicSpec]:
    # The gallery and its data keys: compacted (the latest record per key, tombstones remove), one
    # partition each (one order for every reader). Erasure requests: kept 30 days, like matches.
    # Receipts: compacted, the latest per subject. Replicas' reports: compacted, the latest per replica.
    return [
        TopicSpec(settings.topic("gallery"), 1, 1 * MiB, compact=True),
        TopicSpec(settings.topic("gallery.keys"), 1, 64 * 1024, compact=True),
        TopicSpec(settings.topic("gallery.requests"), settings.partitions, 64 * 1024, 30 * DAY_MS),
        TopicSpec(settings.topic("gallery.receipts"), 1, 64 * 1024, compact=True),
        TopicSpec(settings.topic("gallery.replicas"), 1, 64 * 1024, compact=True),
    ]


def _groups(settings: Settings) -> dict[str, list[str]]:
    groups = {f"{settings.app_id}-gallery-eraser": [settings.topic("gallery.requests")]}
    if settings.gallery_backend == "qdrant":  # with the embedded engine, each replica keeps its own offset
        groups[f"{settings.app_id}-gallery-indexer"] = [settings.topic("gallery")]
    return groups


def _access(settings: Settings) -> Access:
    # Each replica reads the gallery and its keys whole; the eraser reads the receipts and the
    # replicas' reports, and writes tombstones, receipts and (retention) requests.
    gallery = ("gallery", "gallery.keys", "gallery.requests", "gallery.receipts", "gallery.replicas")
    return Access(reads=gallery, writes=("matches", "dlq", "audit.entries", *gallery))


SERVICE = Service(
    "matcher",
    "embeddings",
    _stage,
    topics=_topics,
    groups=_groups,
    commands=add_parsers,
    routes=routes,
    access=_access,
    check=_check,
)
