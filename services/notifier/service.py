"""The notifier as the platform runs it: consumes `matches`; owns the delivery topics, the delivery
engine's consumer group, and the `subscriptions` and `deliveries` commands."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Executor

from facestream.config import Settings
from facestream.io.acls import Access
from facestream.runtime.service import Service
from facestream.services.notifier.admin import delivery_log
from facestream.services.notifier.cli import add_parsers
from facestream.services.notifier.routes import routes
from facestream.services.notifier.stage import NotifierStage
from facestream.services.notifier.topics import delivery_groups, notifier_topics, retry_topics


def _stage(settings: Settings, executor: Executor) -> NotifierStage:
    return NotifierStage(settings)


async def _status(settings: Settings) -> list[str]:
    outcomes = Counter(f"{e['subscription']}: {e['outcome']}" for e in await delivery_log(settings))
    lines = ["webhook deliveries by subscription and outcome (from the delivery log):"]
    return lines + ([f"  {key:60s} {value:8d}" for key, value in sorted(outcomes.items())] or ["  none"])


def _access(settings: Settings) -> Access:
    prefix = f"{settings.topic_prefix}."
    tiers = tuple(t.removeprefix(prefix) for t in retry_topics(settings).values())
    jobs = ("deliveries", "deliveries.log", "deliveries.subjects", *tiers)
    return Access(
        reads=(*jobs, "subscriptions", "crops"),
        writes=(*jobs, "subscriptions", "dlq", "audit.entries"),
        write_prefixes=("deliveries.dlq.",),  # each subscription's dead letters, made when it is added
    )


SERVICE = Service(
    "notifier",
    "matches",
    _stage,
    topics=notifier_topics,
    groups=delivery_groups,
    scheduled=lambda settings: list(retry_topics(settings).values()),
    commands=add_parsers,
    status=_status,
    routes=routes,
    access=_access,
)
