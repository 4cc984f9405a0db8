"""Consumer lag, read from the broker: for each consumer group of the pipeline, topic and
partition, the end offset minus the group's committed offset (what operators scale on)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from facestream.config import Settings
from facestream.io.kafka import admin_client, consumer, running, topic_partitions


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


async def consumer_lag(settings: Settings, groups: Mapping[str, Sequence[str]]) -> list[Lag]:
    """Lag of each consumer group in `groups` (group id: the full names of the topics it reads) on
    those topics and any other of the pipeline's it has committed on, sorted by group, topic and
    partition. A group that has not committed on a topic yet still lags on it from the start."""
    async with running(admin_client(settings)) as admin, running(consumer(settings)) as ends_consumer:
        prefix = f"{settings.topic_prefix}."
        rows: list[Lag] = []
        for group, reads in groups.items():
            offsets = await admin.list_consumer_group_offsets(group)
            parts = [tp for tp in offsets if tp.topic.startswith(prefix)]
            known = await topic_partitions(settings, sorted({tp.topic for tp in parts} | set(reads)), admin)
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


async def pipeline_groups(settings: Settings) -> list[str]:
    """Every consumer group on the broker whose id is the app id or starts with it."""
    async with running(admin_client(settings)) as admin:
        listed = await admin.list_consumer_groups()
    app_id = settings.app_id
    return sorted(g[0] for g in listed if g[0] == app_id or g[0].startswith(f"{app_id}-"))


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
