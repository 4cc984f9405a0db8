"""Topics, with explicit partitions and configs, and small producer/consumer helpers for the CLI,
the demo and the tests (the services themselves run on faust)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.ops.logs import get_logger

log = get_logger(__name__)
MiB = 1024 * 1024
DAY_MS = 24 * 3600 * 1000
# The pipeline's topics, name: (max.message.bytes, retention.ms). Images may carry inline bytes up
# to the configured limit (base64). The transit topics hold photos, face pixels and embeddings:
# they are kept `transit_retention_hours` only (see pipeline_topics), whatever is written here.
# Services add topics of their own (see facestream.runtime.service).
TOPICS: dict[str, tuple[int, int]] = {
    "images": (4 * MiB, 1 * DAY_MS),
    "faces": (1 * MiB, 1 * DAY_MS),
    "embeddings": (1 * MiB, 1 * DAY_MS),
    "matches": (1 * MiB, 30 * DAY_MS),
    "dlq": (1 * MiB, 30 * DAY_MS),
}
TRANSIT = ("images", "faces", "embeddings")
REFUSED = {29, 31}  # TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED
OK = {0, 36, *REFUSED}  # created, TOPIC_ALREADY_EXISTS (another process was first), refused (above)
MAX_REQUEST = 8 * MiB + 64 * 1024
COMPACTION_LAG_MS = 3600 * 1000
MIN_SEGMENT_MS = 60 * 1000  # a segment at least a minute: not a file per record


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: full name, partitions, message size limit and retention (or compaction)."""

    name: str
    partitions: int
    max_bytes: int = 1 * MiB
    retention_ms: int = 30 * DAY_MS
    compact: bool = False

    def new_topic(self, replication: int = 1, min_insync: int = 1) -> NewTopic:
        configs = {
            "max.message.bytes": str(self.max_bytes),
            "cleanup.policy": "delete",
            # With acks=all a write is acknowledged once this many replicas have it: one broker
            # may be lost without losing an acknowledged record when replication > min_insync.
            "min.insync.replicas": str(min_insync),
        }
        if self.compact:
            configs["cleanup.policy"] = "compact"
            # Compaction never touches the segment being written, which rolls after 7 days by
            # default: a record replaced or tombstoned (an erased subject's wrapped data key) would
            # stay readable that long. This rolls it, and cleans it, within the hour.
            configs["max.compaction.lag.ms"] = str(COMPACTION_LAG_MS)
        else:
            configs["retention.ms"] = str(self.retention_ms)
            if self.retention_ms > 0:
                # Retention deletes whole segments: on a quiet topic a record lives until its
                # segment rolls (7 days by default). Rolling at a tenth of the retention bounds it.
                configs["segment.ms"] = str(max(self.retention_ms // 10, MIN_SEGMENT_MS))
        return NewTopic(self.name, self.partitions, replication, topic_configs=configs)


def pipeline_topics(settings: Settings) -> list[TopicSpec]:
    """The topics between the stages, and `crops` (probe faces the detector publishes for
    review links), which lives only as long as a match may still be delivered."""
    transit_ms = int(settings.transit_retention_hours * 3600 * 1000)
    specs = [
        TopicSpec(settings.topic(n), settings.partitions, size, transit_ms if n in TRANSIT else ret)
        for n, (size, ret) in TOPICS.items()
    ]
    ttl_ms = int(settings.webhook_event_ttl_s * 1000)
    specs.append(TopicSpec(settings.topic("crops"), settings.partitions, 1 * MiB, ttl_ms))
    return specs + audit_topics(settings)


def audit_topics(settings: Settings) -> list[TopicSpec]:
    """The audit's topics, one partition each: one order for the chain. Every part writes entries
    to `audit.entries`; the sequencer (services/audit/) chains them into `audit`, kept without a
    time limit, and copies each signed checkpoint to `audit.checkpoints`, its witness."""
    return [
        TopicSpec(settings.topic("audit.entries"), 1, 1 * MiB, 30 * DAY_MS),
        TopicSpec(settings.topic("audit"), 1, 1 * MiB, -1),
        TopicSpec(settings.topic("audit.checkpoints"), 1, 1 * MiB, -1),
    ]


async def ensure_topics(settings: Settings, extra: Iterable[TopicSpec] = ()) -> list[str]:
    """Create the pipeline's topics and `extra` (the services' own) that do not exist yet;
    returns the names created."""
    return await create_topics(settings, [*pipeline_topics(settings), *extra])


async def create_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create those of `specs` that do not exist yet (another process may race us: fine)."""
    wanted = [s.new_topic(settings.kafka_replication_factor, settings.kafka_min_insync_replicas) for s in specs]
    async with running(admin_client(settings, 30)) as admin:
        existing = set(await admin.list_topics())
        new = [t for t in wanted if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                response = await admin.create_topics(new)
                failed = [(t[0], t[1], t[2] if len(t) > 2 else None) for t in response.topic_errors if t[1] not in OK]
                if failed:
                    name, code, message = failed[0]
                    raise ConfigError(
                        f"the brokers refused to create {len(failed)} topic(s), e.g. {name}: "
                        f"{message or f'error {code}'} "
                        f"(kafka_replication_factor {settings.kafka_replication_factor}, kafka_min_insync_replicas "
                        f"{settings.kafka_min_insync_replicas}, partitions {settings.partitions})"
                    )
                refused = [name for name, code, *_ in response.topic_errors if code in REFUSED]
                if refused:
                    # A service's own principal on a secured cluster: an administrator makes the
                    # topics (`facestream kafka topics`); those this principal may not even see are
                    # not its to use, and those it uses will fail loudly where they are missing.
                    log.warning("topics_not_created", topics=refused, reason="this principal may not create topics")
                    new = [t for t in new if t.name not in refused]
                    if not new:
                        return []
            await _wait_for_leaders(admin, [t.name for t in new])
            await _wait_until_serving(settings, {t.name: t.num_partitions for t in new})
            log.info("topics_created", topics=[t.name for t in new])
        return [t.name for t in new]


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
    try:
        async with running(AIOKafkaConsumer(**connection(settings))) as probe:
            parts = [TopicPartition(n, p) for n, count in names.items() for p in range(count)]
            await asyncio.wait_for(probe.end_offsets(parts), 15)
    finally:
        fetcher_log.setLevel(level)


async def topic_partitions(
    settings: Settings, names: list[str], admin: AIOKafkaAdminClient | None = None
) -> dict[str, list[int]]:
    """Partition numbers of each existing topic in `names` (missing topics are left out);
    uses `admin` when the caller has one open."""
    if admin is None:
        async with running(admin_client(settings)) as admin:
            return await topic_partitions(settings, names, admin)
    described = await admin.describe_topics(names)
    return {
        t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if t.get("error_code", 0) == 0
    }


Client = TypeVar("Client", AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient)


@contextlib.asynccontextmanager
async def running(client: Client) -> AsyncIterator[Client]:
    """`client` started, and stopped again on the way out, also when starting it failed (a broker
    that cannot be reached would otherwise leave an unclosed client and its warning behind)."""
    close = client.close if isinstance(client, AIOKafkaAdminClient) else client.stop
    try:
        await client.start()
        yield client
    finally:
        await close()


def connection(settings: Settings) -> dict[str, Any]:
    """Where and how every Kafka client of this process connects: the brokers, and TLS and SASL
    as the settings say (each service may run as its own principal)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_username
        options["sasl_plain_password"] = settings.kafka_password.get_secret_value()
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS towards the brokers: their certificates checked against `kafka_ssl_cafile` (else the
    system's CAs), host names checked, and a client certificate where one is configured."""
    return _ssl_context(settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if certfile is not None:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context


def admin_client(settings: Settings, timeout_s: float = 10.0) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection(settings), request_timeout_ms=int(timeout_s * 1000))


def producer(settings: Settings, **kwargs: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": MAX_REQUEST,
        "linger_ms": 5,
        **kwargs,  # the caller's choice wins
    }
    return AIOKafkaProducer(**connection(settings), **options)


# How old a group member's view of the topics may get. A rebalance that runs while a broker is
# still electing leaders (just restarted) sees some topics without partitions and assigns none of
# them; the group's leader rebalances again once a refresh shows them. With the clients' default
# (5 minutes) a topic would go unread that long.
METADATA_MAX_AGE_MS = 10_000


def consumer(settings: Settings, *topics: str, group_id: str | None = None, **kwargs: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "auto_offset_reset": "earliest",
        "enable_auto_commit": group_id is not None,
        "max_partition_fetch_bytes": MAX_REQUEST,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        **kwargs,  # the caller's choice wins
    }
    return AIOKafkaConsumer(*(settings.topic(t) for t in topics), **connection(settings), group_id=group_id, **options)


async def partition_reader(settings: Settings, tp: TopicPartition, fetch_max_wait_ms: int = 20) -> AIOKafkaConsumer:
    """A started consumer of the one partition `tp`, from its beginning, without a group, for
    `read_to_end`. Its fetches wait at most `fetch_max_wait_ms` for data: a reader that wants "up
    to the end" of a rarely written topic must not sit out the broker's default long poll on every
    empty fetch. Between reads the partition is paused: a started consumer otherwise fetches
    ahead without end, here one empty fetch every `fetch_max_wait_ms`, a cost the broker and this
    process pay all the time (50 requests a second per reader at 20 ms)."""
    cons = consumer(settings, fetch_max_wait_ms=fetch_max_wait_ms)
    await cons.start()
    cons.assign([tp])
    cons.pause(tp)
    await cons.seek_to_beginning(tp)
    return cons


async def close(*clients: AIOKafkaConsumer | AIOKafkaProducer | None, within_s: float = 10.0) -> None:
    """Stop each client (None: never made), each within `within_s`: closing towards a broker that
    is away would wait for it, and a stopping service must not hang on that. Failures are ignored:
    nothing is left to do with a client that is going away."""
    for client in clients:
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop(), within_s)


async def table_reader(settings: Settings, topic: str, handle: Callable[[Any], None]) -> AIOKafkaConsumer:
    """A started consumer, without a group, of the one-partition compacted `topic` (a table kept
    in Kafka: subscriptions, tokens), every record up to its end handed to `handle`; `follow` it to
    keep up with later writes."""
    cons = AIOKafkaConsumer(**connection(settings), enable_auto_commit=False, group_id=None)
    await cons.start()
    tp = TopicPartition(topic, 0)
    cons.assign([tp])
    await cons.seek_to_beginning(tp)
    end = (await cons.end_offsets([tp]))[tp]
    while await cons.position(tp) < end:
        for records in (await cons.getmany(tp, timeout_ms=500)).values():
            for record in records:
                handle(record)
    return cons


async def read_to_end(
    cons: AIOKafkaConsumer, tp: TopicPartition, handle: Callable[[Any], None], wait_ms: int = 0
) -> None:
    """Hand `handle` every record of `tp` from the reader's position up to the partition's end as
    it is now; with `wait_ms`, first wait up to that long for a record to arrive. The reader
    (`partition_reader`) fetches only while in here."""
    end = (await cons.end_offsets([tp]))[tp]
    wait = wait_ms
    if not wait and await cons.position(tp) >= end:
        return
    cons.resume(tp)
    try:
        while wait or await cons.position(tp) < end:
            # Never a zero timeout in a loop: it would not let the fetcher run.
            batch = await cons.getmany(tp, timeout_ms=wait or 500)
            wait = 0
            for record in batch.get(tp, []):
                handle(record)
    finally:
        cons.pause(tp)  # what it fetched ahead is dropped, the position kept: read again next time


async def each_record(cons: AIOKafkaConsumer, handle: Callable[[Any], Awaitable[None]], failure: str) -> None:
    """Hand every record the group member `cons` gets to `handle`, one at a time, committing each
    once handled. When handling fails (the broker or a dependency away), log `failure`, pause, and
    go back to the committed position: a record half done is done again, never skipped (so
    `handle` must be safe to repeat)."""
    while True:
        try:
            for tp, records in (await cons.getmany(timeout_ms=500)).items():
                for record in records:
                    await handle(record)
                    await cons.commit({tp: record.offset + 1})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(failure, error=f"{type(exc).__name__}: {exc}"[:500])
            await asyncio.sleep(1.0)
            for tp in cons.assignment():
                committed = await cons.committed(tp)
                if committed is not None:
                    cons.seek(tp, committed)


async def read_topic(
    settings: Settings, topic: str, group_id: str | None = None, since: float | None = None, committed: bool = False
) -> list[Any]:
    """Every record of `topic` (a full name) from the group's position (the beginning without a
    group; the first record written at or after the epoch time `since`, when given) up to the
    end offsets taken at the start. With a group, commits what was read. `committed`: only what
    transactions committed (the audit chain)."""
    cons = AIOKafkaConsumer(
        **connection(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_REQUEST,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    try:
        await cons.start()
        parts = [TopicPartition(topic, p) for p in (await topic_partitions(settings, [topic])).get(topic, [])]
        if not parts:
            return []
        cons.assign(parts)
        if group_id is None:
            await cons.seek_to_beginning(*parts)
        ends = await cons.end_offsets(parts)
        if since is not None:
            starts = await cons.offsets_for_times({tp: int(since * 1000) for tp in parts})
            for tp in parts:
                cons.seek(tp, starts[tp].offset if starts[tp] is not None else ends[tp])
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
    """Delete every topic of this topic prefix, and the app's own (faust's leader topics), so demo
    and test runs clean up after themselves."""
    async with running(admin_client(settings)) as admin:
        mine = (f"{settings.topic_prefix}.", f"{settings.app_id}-")
        names = [t for t in await admin.list_topics() if t.startswith(mine)]
        if names:
            await admin.delete_topics(names)
        return names


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
        for part in batch.values():
            for record in part:
                handle(record)
