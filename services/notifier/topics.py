"""The notifier's own topics: delivery jobs, their attempt log, the retry tiers, the subscription
store, and one dead-letter topic per subscription."""

from __future__ import annotations

from facestream.config import Settings
from facestream.io.kafka import DAY_MS, MiB, TopicSpec


def _delay_label(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def retry_topics(settings: Settings) -> dict[float, str]:
    """One retry topic per distinct delay of the webhook schedule (full names, by delay). Every
    job in a tier waits the same time, so each partition is ordered by due time."""
    return {
        d: settings.topic(f"deliveries.retry.{_delay_label(d)}")
        for d in sorted(set(settings.webhook_schedule_s))
        if d > 0
    }


def dlq_topic(settings: Settings, name: str) -> str:
    """The subscription's own dead-letter topic: exhausted, refused and expired deliveries."""
    return settings.topic(f"deliveries.dlq.{name}")


def dlq_spec(settings: Settings, name: str) -> TopicSpec:
    return TopicSpec(dlq_topic(settings, name), settings.partitions, 8 * MiB, 30 * DAY_MS)


def notifier_topics(settings: Settings) -> list[TopicSpec]:
    """Jobs (key: subscription) and their log; the retry tiers; the subscriptions, on one partition
    (one order of changes) and compacted (the latest record per name stays)."""
    specs = [
        TopicSpec(settings.topic("deliveries"), settings.partitions),
        TopicSpec(settings.topic("deliveries.log"), settings.partitions),
    ]
    specs += [TopicSpec(t, settings.partitions) for t in retry_topics(settings).values()]
    specs.append(TopicSpec(settings.topic("subscriptions"), 1, compact=True))
    # Which subscriber was sent which subject (key: subscription/subject; removed when the subject
    # is erased and the subscriber told).
    specs.append(TopicSpec(settings.topic("deliveries.subjects"), 1, 64 * 1024, compact=True))
    return specs


def delivery_groups(settings: Settings) -> dict[str, list[str]]:
    """The delivery engine's consumer group and the topics it reads (its lag is the deliveries
    still pending, new and retrying); the erasure notices' group, on the erasure receipts; the
    review notices' group, on the reviewers' decisions."""
    return {
        f"{settings.app_id}-deliveries": [settings.topic("deliveries"), *retry_topics(settings).values()],
        f"{settings.app_id}-erasure-notices": [settings.topic("gallery.receipts")],
        f"{settings.app_id}-review-notices": [settings.topic("reviews")],
    }
