"""Topics, with explicit partitions and configs, and small producer/consumer helpers for the CLI,
the demo and the tests (the services themselves run on faust)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from facestream.config import Settings
from facestream.logs import get_logger

log = get_logger(__name__)
MiB = 1024 * 1024
DAY_MS = 24 * 3600 * 1000
# name: (max.message.bytes, retention.ms). Images may carry inline bytes up to the configured limit
# (base64); dead letters carry the original record, so they get the most room.
TOPICS: dict[str, tuple[int, int]] = {
    "images": (4 * MiB, 7 * DAY_MS),
    "faces": (1 * MiB, 1 * DAY_MS),
    "embeddings": (1 * MiB, 1 * DAY_MS),
    "matches": (1 * MiB, 30 * DAY_MS),
    "dlq": (8 * MiB, 30 * DAY_MS),
    # Webhook delivery jobs (key: subscription), their attempt log, and (below) the retry tiers.
    "deliveries": (1 * MiB, 30 * DAY_MS),
    "deliveries.log": (1 * MiB, 30 * DAY_MS),
}
MAX_REQUEST = 8 * MiB + 64 * 1024


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


def _new_topic(name: str, partitions: int, size: int, retention: int, compact: bool = False) -> NewTopic:
    configs = {"max.message.bytes": str(size), "retention.ms": str(retention), "cleanup.policy": "delete"}
    if compact:
        configs = {"max.message.bytes": str(size), "cleanup.policy": "compact"}
    return NewTopic(name, partitions, 1, topic_configs=configs)


def _wanted_topics(settings: Settings) -> list[NewTopic]:
    wanted = [_new_topic(settings.topic(n), settings.partitions, size, ret) for n, (size, ret) in TOPICS.items()]
    wanted += [_new_topic(t, settings.partitions, 1 * MiB, 30 * DAY_MS) for t in retry_topics(settings).values()]
    # Probe crops live only as long as a match may still be delivered.
    ttl_ms = int(settings.webhook_event_ttl_s * 1000)
    wanted.append(_new_topic(settings.topic("crops"), settings.partitions, 1 * MiB, ttl_ms))
    # Subscriptions: one partition (one order of changes), compacted (the latest per name stays).
    wanted.append(_new_topic(settings.topic("subscriptions"), 1, 1 * MiB, 0, compact=True))
    return wanted


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the names created."""
    return await _create(settings, _wanted_topics(settings))


async def ensure_topic(settings: Settings, name: str) -> None:
    """Create one more topic (a subscription's dead letters) if it does not exist yet."""
    await _create(settings, [_new_topic(name, settings.partitions, 8 * MiB, 30 * DAY_MS)])


async def _create(settings: Settings, wanted: list[NewTopic]) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [t for t in wanted if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                await admin.create_topics(new)
            await _wait_for_leaders(admin, [t.name for t in new])
            await _wait_until_serving(settings, {t.name: t.num_partitions for t in new})
            log.info("topics_created", topics=[t.name for t in new])
        return [t.name for t in new]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], limit_s: float = 15) -> None:
    """New partitions answer NOT_LEADER until the controller has elected their leaders; waiting
    here keeps the first produce and fetch requests from failing and retrying."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while asyncio.get_running_loop().time() < deadline:
        described = await admin.describe_topics(names)
        if all(
            t.get("error_code", 0) == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)


async def _wait_until_serving(settings: Settings, names: dict[str, int]) -> None:
    """A leader in the metadata may still refuse ListOffsets for a moment; ask once ourselves
    (aiokafka retries and logs each refusal as an error) so clients started next do not."""
    fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
    level = fetcher_log.level
    fetcher_log.setLevel(logging.CRITICAL)
    probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await probe.start()
    try:
        parts = [TopicPartition(n, p) for n, count in names.items() for p in range(count)]
        await asyncio.wait_for(probe.end_offsets(parts), 15)
    finally:
        await probe.stop()
        fetcher_log.setLevel(level)


async def topic_partitions(
    settings: Settings, names: list[str], admin: AIOKafkaAdminClient | None = None
) -> dict[str, list[int]]:
    """Partition numbers of each existing topic in `names` (missing topics are left out);
    uses `admin` when the caller has one open."""
    if admin is None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            return await topic_partitions(settings, names, admin)
        finally:
            await admin.close()
    described = await admin.describe_topics(names)
    return {
        t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if t.get("error_code", 0) == 0
    }


def producer(settings: Settings, **kwargs: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=MAX_REQUEST,
        linger_ms=5,
        **kwargs,
    )


def consumer(settings: Settings, *topics: str, group_id: str | None = None, **kwargs: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *(settings.topic(t) for t in topics),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=group_id is not None,
        max_partition_fetch_bytes=MAX_REQUEST,
        **kwargs,
    )


async def read_topic(settings: Settings, topic: str, group_id: str | None = None) -> list[Any]:
    """Every record of `topic` (a full name) from the group's position (the beginning without a
    group) up to the end offsets taken at the start. With a group, commits what was read."""
    cons = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_REQUEST,
    )
    await cons.start()
    try:
        parts = [TopicPartition(topic, p) for p in (await topic_partitions(settings, [topic])).get(topic, [])]
        if not parts:
            return []
        cons.assign(parts)
        if group_id is None:
            await cons.seek_to_beginning(*parts)
        ends = await cons.end_offsets(parts)
        out: list[Any] = []
        while [tp for tp, end in ends.items() if await cons.position(tp) < end]:
            for tp, records in (await cons.getmany(*parts, timeout_ms=500)).items():
                out.extend(r for r in records if r.offset < ends[tp])
        if group_id is not None:
            await cons.commit(ends)
        return out
    finally:
        await cons.stop()


async def delete_topics(settings: Settings) -> list[str]:
    """Delete every topic of this topic prefix (demo and test runs clean up after themselves)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(f"{settings.topic_prefix}.")]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


async def follow(consumer: AIOKafkaConsumer, handle: Callable[[Any], None]) -> None:
    """Hand every record `consumer` receives to `handle`, until cancelled."""
    while True:
        try:
            batch = await consumer.getmany(timeout_ms=1000)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker away for a while: keep following
            log.warning(
                "follow_failed", topics=sorted({tp.topic for tp in consumer.assignment()}), error=str(exc)[:200]
            )
            await asyncio.sleep(1.0)
            continue
        for records in batch.values():
            for r in records:
                handle(r)
