"""Topics, with explicit partitions and configs, and small producer/consumer helpers for the CLI,
the demo and the tests (the services themselves run on faust)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

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
}
MAX_REQUEST = 8 * MiB + 64 * 1024


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                settings.topic(name),
                settings.partitions,
                1,
                topic_configs={
                    "max.message.bytes": str(size),
                    "retention.ms": str(retention),
                    "cleanup.policy": "delete",
                },
            )
            for name, (size, retention) in TOPICS.items()
            if settings.topic(name) not in existing
        ]
        if new:
            await admin.create_topics(new)
            await _wait_for_leaders(admin, [t.name for t in new])
            await _wait_until_serving(settings, [t.name for t in new])
            log.info("topics_created", topics=[t.name for t in new], partitions=settings.partitions)
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


async def _wait_until_serving(settings: Settings, names: list[str]) -> None:
    """A leader in the metadata may still refuse ListOffsets for a moment; ask once ourselves
    (aiokafka retries and logs each refusal as an error) so clients started next do not."""
    fetcher_log = logging.getLogger("aiokafka.consumer.fetcher")
    level = fetcher_log.level
    fetcher_log.setLevel(logging.CRITICAL)
    probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await probe.start()
    try:
        parts = [TopicPartition(n, p) for n in names for p in range(settings.partitions)]
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
