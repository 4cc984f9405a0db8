"""Consumer lag, read from the broker: for each consumer group of the pipeline, topic and
partition, the end offset minus the group's committed offset (what operators scale on), and how
old the oldest record not yet consumed is (what latency objectives are about).

Webhook retries waiting in a tier for their due time are not lag: the delivery engine is right
not to take them yet. On a tier the jobs not consumed are read: those not due yet are counted
apart (`waiting`, with the next due time), those due are lag like any other record."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from facestream.config import Settings
from facestream.contracts.timeutil import iso, parse_iso
from facestream.io.kafka import admin_client, consumer, running, topic_partitions

HEAD_FETCH_BYTES = 64 * 1024  # the broker still returns a first batch larger than this (KIP-74)
TIER_READ = 2000  # jobs of a retry tier's partition read to tell the due from the scheduled


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: int
    committed: int  # -1: nothing committed yet (lag counts from the start of the log)
    end: int
    # When the oldest record not consumed began to wait: its Kafka timestamp; on a retry tier,
    # the due time of the oldest job that is due. None: nothing waits, or it could not be read.
    oldest_at: float | None = None
    waiting: int = 0  # retry tiers: jobs not due yet (scheduled, not lag)
    due_at: float | None = None  # retry tiers: when the first of those falls due

    @property
    def lag(self) -> int:
        """Records not consumed, scheduled ones included."""
        return self.end - max(self.committed, 0)

    @property
    def behind(self) -> int:
        """What counts as lag: the records not consumed, less the retries not due yet."""
        return self.lag - self.waiting

    @property
    def scheduled(self) -> bool:
        return self.waiting > 0

    def age(self, now: float) -> float:
        """Seconds the oldest record not consumed has waited (0 when there is none)."""
        return max(0.0, now - self.oldest_at) if self.oldest_at is not None and self.behind else 0.0


async def consumer_lag(
    settings: Settings,
    groups: Mapping[str, Sequence[str]],
    scheduled: Collection[str] = (),
    clock: Callable[[], float] = time.time,
) -> list[Lag]:
    """Lag of each consumer group in `groups` (group id: the full names of the topics it reads) on
    those topics and any other of the pipeline's it has committed on, sorted by group, topic and
    partition. A group that has not committed on a topic yet still lags on it from the start.
    Where a row lags, the first record not consumed is read for its timestamp, and on the topics
    in `scheduled` (retry tiers, full names) for its due time."""
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
    rows = await _with_heads(settings, rows, set(scheduled), clock())
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


async def _with_heads(settings: Settings, rows: list[Lag], scheduled: set[str], now: float) -> list[Lag]:
    """`rows`, where they lag, with when their oldest record began to wait; on the retry tiers
    (`scheduled`) with the jobs not due yet counted apart. What cannot be read in time is left
    unknown (and a tier's jobs then count as lag)."""
    lagging = [r for r in rows if r.lag > 0]
    if not lagging:
        return rows
    read: dict[tuple[str, str, int], Lag] = {}
    async with running(consumer(settings, max_partition_fetch_bytes=HEAD_FETCH_BYTES)) as reader:
        for group in sorted({r.group for r in lagging}):
            mine = {TopicPartition(r.topic, r.partition): r for r in lagging if r.group == group}
            for tp, row in (await _read_heads(reader, mine, scheduled, now)).items():
                read[(group, tp.topic, tp.partition)] = row
    return [read.get((r.group, r.topic, r.partition), r) for r in rows]


async def _read_heads(
    reader: AIOKafkaConsumer, rows: Mapping[TopicPartition, Lag], scheduled: set[str], now: float, wait_s: float = 3.0
) -> dict[TopicPartition, Lag]:
    """Each row with what its records from the committed offset on say: the first one's
    timestamp; on a retry tier, up to TIER_READ of its jobs, each due or not yet. Jobs in a tier
    wait the same delay, so they fall due in the order they were written (a 10% jitter aside): the
    ones past those read are counted as the last one read is."""
    reader.assign(list(rows))
    starts = await reader.beginning_offsets(list(rows))
    for tp, row in rows.items():
        reader.seek(tp, max(row.committed, starts[tp]))
    due: dict[TopicPartition, list[float | None]] = {tp: [] for tp in rows}
    first_at: dict[TopicPartition, float] = {}
    todo = set(rows)
    deadline = time.monotonic() + wait_s
    while todo and time.monotonic() < deadline:
        batch = await reader.getmany(*todo, timeout_ms=200, max_records=1000)
        for tp, records in batch.items():
            row = rows[tp]
            for record in records:
                if record.offset >= row.end:
                    break
                first_at.setdefault(tp, record.timestamp / 1000)
                if tp.topic in scheduled:
                    due[tp].append(_due(record.value))
            if (
                tp.topic not in scheduled
                or len(due[tp]) >= min(row.lag, TIER_READ)
                or records[-1].offset + 1 >= row.end
            ):
                todo.discard(tp)
                reader.pause(tp)
    out = {}
    for tp, row in rows.items():
        if tp not in first_at:
            continue
        times = due[tp]
        if tp.topic not in scheduled or not times:
            out[tp] = replace(row, oldest_at=first_at[tp])
            continue
        later = [t for t in times if t is not None and t > now]
        waiting = len(later) + (row.lag - len(times) if times[-1] is not None and times[-1] > now else 0)
        overdue = [t if t is not None else first_at[tp] for t in times if t is None or t <= now]
        out[tp] = replace(row, oldest_at=min(overdue, default=None), waiting=waiting, due_at=min(later, default=None))
    return out


def _due(value: bytes | None) -> float | None:
    try:
        return parse_iso(orjson.loads(value or b"{}")["due_at"]).timestamp()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # not a delivery job: it lags like any record


async def pipeline_groups(settings: Settings) -> list[str]:
    """Every consumer group on the broker whose id is the app id or starts with it."""
    async with running(admin_client(settings)) as admin:
        listed = await admin.list_consumer_groups()
    app_id = settings.app_id
    return sorted(g[0] for g in listed if g[0] == app_id or g[0].startswith(f"{app_id}-"))


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def table(rows: list[Lag], all_rows: bool = False, now: float | None = None) -> str:
    """The lag as text: the groups and partitions that lag (every row with `all_rows`), with the
    age of their oldest record and per-group totals; then the scheduled webhook retries per tier
    with their next due time."""
    now = time.time() if now is None else now
    shown = [r for r in rows if all_rows or r.behind > 0]
    g = max([len("group"), *(len(r.group) for r in shown)])
    t = max([len("topic"), *(len(r.topic) for r in shown)])
    lines = []
    if shown:
        lines.append(
            f"{'group':{g}s} {'topic':{t}s} {'part':>4s} {'committed':>10s} {'end':>10s} {'lag':>8s} {'oldest':>9s}"
        )
        for r in shown:
            committed = "-" if r.committed < 0 else str(r.committed)
            oldest = _duration(r.age(now)) if r.behind and r.oldest_at is not None else ""
            note = f"  {r.waiting} scheduled" if r.scheduled else ""
            numbers = f"{r.partition:4d} {committed:>10s} {r.end:10d} {r.behind:8d} {oldest:>9s}"
            lines.append(f"{r.group:{g}s} {r.topic:{t}s} {numbers}{note}")
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.group] = totals.get(r.group, 0) + r.behind
    lagging = {group: total for group, total in totals.items() if total or all_rows}
    width = max([len("total"), *(len(f"total {group}") for group in lagging)])
    lines += [f"{'total ' + group:{width}s} {total:8d}" for group, total in lagging.items()]
    idle = f"  (no group lags: {len(totals)} groups, {len(rows)} partitions; --all lists them)"
    lines.append(f"{'total':{width}s} {sum(totals.values()):8d}" + ("" if lagging or all_rows else idle))
    tiers: dict[tuple[str, str], list[Lag]] = {}
    for r in rows:
        if r.scheduled:
            tiers.setdefault((r.group, r.topic), []).append(r)
    if tiers:
        lines.append("scheduled webhook retries (waiting for their due time; not lag):")
        for (_, topic), tier_rows in sorted(tiers.items()):
            due = min(r.due_at for r in tier_rows if r.due_at is not None)
            jobs = sum(r.waiting for r in tier_rows)
            lines.append(f"  {topic}  {jobs} jobs, next due {iso(due)} (in {_duration(max(0.0, due - now))})")
    return "\n".join(lines)
