"""The matcher as the platform runs it: consumes `embeddings`, searches or enrols; owns the
gallery topic (the system of record its replicas build their indexes from)."""

from __future__ import annotations

from concurrent.futures import Executor

from facestream.config import Settings
from facestream.io.kafka import MiB, TopicSpec
from facestream.runtime.service import Service
from facestream.services.matcher.cli import add_parsers
from facestream.services.matcher.stage import MatcherStage


def _stage(settings: Settings, executor: Executor) -> MatcherStage:
    return MatcherStage(settings)


def _topics(settings: Settings) -> list[TopicSpec]:
    # Compacted (the latest record per point, tombstones remove), one partition (one order for all).
    return [TopicSpec(settings.topic("gallery"), 1, 1 * MiB, compact=True)]


def _groups(settings: Settings) -> dict[str, list[str]]:
    if settings.gallery_backend != "qdrant":
        return {}  # each replica keeps its own offset beside its index
    return {f"{settings.app_id}-gallery-indexer": [settings.topic("gallery")]}


SERVICE = Service("matcher", "embeddings", _stage, topics=_topics, groups=_groups, commands=add_parsers)
