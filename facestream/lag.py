"""Consumer lag, read from the broker: for each consumer group of the pipeline, topic and
partition, the end offset minus the group's committed offset (what operators scale on)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from facestream.config import Settings
from facestream.kafka import topic_partitions


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: int
    committed: int  # -1: nothing committed yet (lag counts from the start of the log)
    end: int

    @property
    def lag(self) -> int:
        return self.end - max(self.committed, 0)


async def consumer_lag(settings: Settings, groups: list[str] | None = None) -> list[Lag]:
    """Lag of `groups` (default: every group whose id starts with the app id) on the pipeline's
    topics, sorted by group, topic and partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
    await admin.start()
    ends_consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await ends_consumer.start()
    try:
        if groups is None:
            listed = await admin.list_consumer_groups()
            groups = sorted(g[0] for g in listed if g[0] == settings.app_id or g[0].startswith(f"{settings.app_id}-"))
        prefix = f"{settings.topic_prefix}."
        rows: list[Lag] = []
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            parts = [tp for tp in offsets if tp.topic.startswith(prefix)]
            # A group that has not committed on a topic yet still lags on it: include every
            # partition of the topics it consumes (known from its name) or has committed on.
            topics = {tp.topic for tp in parts} | {settings.topic(t) for t in source_topics(settings, group)}
            known = await topic_partitions(settings, sorted(topics), admin)
            for topic, numbers in known.items():
                for p in numbers:
                    tp = TopicPartition(topic, p)
                    if tp not in offsets:
                        parts.append(tp)
            if not parts:
                continue
            ends = await ends_consumer.end_offsets(parts)
            for tp in parts:
                committed = offsets[tp].offset if tp in offsets else -1
                rows.append(Lag(group, tp.topic, tp.partition, committed, ends[tp]))
        return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))
    finally:
        await ends_consumer.stop()
        await admin.close()


def source_topics(settings: Settings, group: str) -> list[str]:
    """The topics a facestream consumer group reads: all four stages' inputs for the
    all-in-one group, the service's input for `<app_id>-<service>` groups, the delivery and
    retry topics for the delivery engine's group."""
    from facestream.app import SERVICES, SOURCE

    if group == settings.app_id:
        return [SOURCE[s] for s in SERVICES]
    if group == f"{settings.app_id}-deliveries":  # the notifier's delivery engine
        from facestream.kafka import retry_topics

        prefix = f"{settings.topic_prefix}."
        return ["deliveries", *(t.removeprefix(prefix) for t in retry_topics(settings).values())]
    services = group.removeprefix(f"{settings.app_id}-").split("-")
    return [SOURCE[s] for s in services if s in SOURCE]


def table(rows: list[Lag]) -> str:
    """The lag as a text table with per-group totals."""
    lines = [f"{'group':32s} {'topic':34s} {'part':>4s} {'committed':>10s} {'end':>10s} {'lag':>8s}"]
    totals: dict[str, int] = {}
    for r in rows:
        committed = "-" if r.committed < 0 else str(r.committed)
        lines.append(f"{r.group:32s} {r.topic:34s} {r.partition:4d} {committed:>10s} {r.end:10d} {r.lag:8d}")
        totals[r.group] = totals.get(r.group, 0) + r.lag
    for group, total in totals.items():
        lines.append(f"{'total ' + group:83s} {total:8d}")
    lines.append(f"{'total':83s} {sum(totals.values()):8d}")
    return "\n".join(lines)
