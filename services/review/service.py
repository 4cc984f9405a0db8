"""Review as the platform runs it: no stream and no server of its own; its topic, its commands
and its API operations (the board runs in whichever worker serves the API)."""

from __future__ import annotations

from facestream import review
from facestream.config import Settings
from facestream.io.kafka import DAY_MS, TopicSpec
from facestream.runtime.service import Service
from facestream.services.review.cli import add_parsers
from facestream.services.review.routes import routes


def _topics(settings: Settings) -> list[TopicSpec]:
    # Decisions, keyed by match: kept a year (the audit log keeps them for ever, by reference).
    return [TopicSpec(settings.topic(review.TOPIC), settings.partitions, 64 * 1024, 365 * DAY_MS)]


SERVICE = Service("review", "", topics=_topics, commands=add_parsers, routes=routes)
