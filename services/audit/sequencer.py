"""The audit sequencer: the one writer of the audit chain.

It consumes `audit.entries` (one partition) in its consumer group, so one sequencer in the whole
deployment holds the partition; it writes the chained records and the consumed offsets in one Kafka
transaction under a fixed transactional id, so a sequencer that lost the partition (a zombie) is
fenced by the one that took it over and can never interleave a second chain. On taking the partition
it reads the chain's tail back (committed records only) for the head and the entry ids recently
chained: an entry written twice (at-least-once) is chained once.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from facestream import contracts
from facestream.audit import ENTRIES
from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.io.kafka import close, consumer, producer
from facestream.keys import configured_key
from facestream.ops.logs import get_logger
from facestream.runtime.stage import Record, dead_letter
from facestream.runtime.tasks import cancel
from facestream.services.audit.chain import Chainer, Head, head_of, key_from_seed

log = get_logger(__name__)
REMEMBER = 100_000  # entry ids kept for de-duplication (a redelivery comes soon after the original)
# Each transaction costs the broker about six requests and a commit marker whatever it holds, and
# entries come one a search: the sequencer gathers what arrives in this long (or MAX_BATCH entries)
# into one transaction, instead of one transaction an entry at the pipeline's pace.
GATHER_S = 0.2
MAX_BATCH = 500


def signing_key(settings: Settings, create: bool = True) -> Ed25519PrivateKey:
    """From `audit_signing_key`, or the key file under data_dir (made by a worker, never by a command)."""
    raw = configured_key(
        settings.audit_signing_key.get_secret_value(), settings.data_dir, "audit.key", "audit_signing_key", create
    )
    return key_from_seed(raw)


def verify_key(settings: Settings) -> Ed25519PublicKey:
    """`audit_verify_key` if set, else the public half of the signing key."""
    if settings.audit_verify_key:
        try:
            raw = base64.urlsafe_b64decode(settings.audit_verify_key.encode())
            return Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise ConfigError(f"audit_verify_key is not an Ed25519 public key in url-safe base64: {exc}") from exc
    return signing_key(settings, create=False).public_key()


def public_text(key: Ed25519PrivateKey) -> str:
    return base64.urlsafe_b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Sequencer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner.release()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class Sequencer:
    """Runs beside a worker's agents (the audit service's server)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = f"{settings.app_id}-audit"
        self.entries = TopicPartition(settings.topic(ENTRIES), 0)
        self.chain_topic = settings.topic("audit")
        self.witness_topic = settings.topic("audit.checkpoints")
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._chainer: Chainer | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._unsealed_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._key = signing_key(self.settings)
        self._consumer = consumer(
            self.settings, group_id=self.group, enable_auto_commit=False, isolation_level="read_committed"
        )
        await self._consumer.start()
        self._consumer.subscribe([self.entries.topic], listener=_Listener(self))
        self._task = asyncio.create_task(self._run(), name="audit-sequencer")
        log.info("audit_sequencer_started", key=public_text(self._key))

    async def stop(self) -> None:
        await cancel(self._task)
        await self.release()
        await close(self._consumer)

    @property
    def holding(self) -> bool:
        """Whether this sequencer is the chain's writer now."""
        return self._chainer is not None

    async def release(self) -> None:
        """Give up the chain (the partition is going elsewhere, or a write failed): the next
        holder, or this one again, starts from the chain as the topic holds it."""
        producer, self._producer, self._chainer = self._producer, None, None
        await close(producer)

    async def _take(self) -> None:
        """Become the chain's writer: fence any earlier one, then read the head back."""
        self._producer = producer(self.settings, transactional_id=f"{self.settings.app_id}-audit-sequencer")
        await self._producer.start()  # initialises the transactional id: an earlier holder is fenced now
        head, seen = await self._read_tail()
        self._chainer = Chainer(self._key, head)
        self._seen = seen
        self._unsealed_since = time.monotonic() if head.unsealed else None
        log.info("audit_chain_taken", next_seq=head.seq, unsealed=head.unsealed)

    async def _read_tail(self) -> tuple[Head, OrderedDict[str, None]]:
        tp = TopicPartition(self.chain_topic, 0)
        reader = consumer(self.settings, isolation_level="read_committed")
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            span = 3 * self.settings.audit_checkpoint_records + REMEMBER
            start = max(0, end - span)
            while True:
                records = await _read(reader, tp, start, end)
                values = [orjson.loads(r.value) for r in records]
                checkpoints = [i for i, v in enumerate(values) if v["event_type"] == "audit.checkpoint"]
                if checkpoints or start == 0:
                    break
                start = max(0, start - 4 * span)  # the last checkpoint is further back
            seen: OrderedDict[str, None] = OrderedDict(
                (v["entry"]["entry_id"], None) for v in values[-REMEMBER:] if v["event_type"] == "audit.record"
            )
            if not values:
                return Head(), seen
            after = values[checkpoints[-1] + 1 :] if checkpoints else values
            return head_of(values[-1], len(after)), seen
        finally:
            await close(reader)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                records = await self._gather()
                if self.entries not in self._consumer.assignment():
                    continue
                if self._chainer is None:
                    await self._take()
                await self._write(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away, or fenced: start again from the topic
                log.error("audit_sequencer_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                await self.release()
                await asyncio.sleep(1.0)
                await self._rewind()

    async def _gather(self) -> list[Any]:
        """The entries that arrive within GATHER_S of the first one (at most MAX_BATCH); none after
        half a second without any (a checkpoint may still be due)."""
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=500, max_records=MAX_BATCH)
        records = list(batch.get(self.entries, []))
        deadline = time.monotonic() + GATHER_S
        while records and len(records) < MAX_BATCH and (left := deadline - time.monotonic()) > 0:
            wait_ms = max(1, int(left * 1000))
            more = await self._consumer.getmany(timeout_ms=wait_ms, max_records=MAX_BATCH - len(records))
            records += more.get(self.entries, [])
        return records

    async def _rewind(self) -> None:
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            committed = await self._consumer.committed(tp)
            if committed is not None:
                self._consumer.seek(tp, committed)
            else:
                await self._consumer.seek_to_beginning(tp)

    def _due(self) -> bool:
        assert self._chainer is not None
        unsealed = self._chainer.head.unsealed
        if not unsealed:
            return False
        waited = time.monotonic() - (self._unsealed_since or time.monotonic())
        return unsealed >= self.settings.audit_checkpoint_records or waited >= self.settings.audit_checkpoint_s

    async def _write(self, records: list[Any]) -> None:
        assert self._chainer is not None
        assert self._producer is not None
        if not records and not self._due():
            return
        chained: list[dict[str, Any]] = []
        letters: list[dict[str, Any]] = []
        batch: set[str] = set()
        for record in records:
            try:
                entry = contracts.loads(record.value, "audit.entry")
            except Exception as exc:
                rec = Record(record.value, record.key, record.topic, record.partition, record.offset)
                letters.append(dead_letter("audit", rec, exc))
                continue
            if entry["entry_id"] in self._seen or entry["entry_id"] in batch:
                continue  # written twice upstream: chained once
            batch.add(entry["entry_id"])
            chained.append(self._chainer.record(entry))
            if self._unsealed_since is None:
                self._unsealed_since = time.monotonic()
            if self._due():
                chained.append(self._chainer.checkpoint())
                self._unsealed_since = None
        if self._due():
            chained.append(self._chainer.checkpoint())
            self._unsealed_since = None
        async with self._producer.transaction():
            for value in chained:
                key = str(value["seq"]).encode()
                await self._producer.send(self.chain_topic, contracts.dumps(value), key=key, partition=0)
                if value["event_type"] == "audit.checkpoint":
                    await self._producer.send(self.witness_topic, contracts.dumps(value), key=key, partition=0)
            for letter in letters:
                await self._producer.send(self.settings.topic("dlq"), contracts.dumps(letter), key=None)
            if records:
                offsets = {self.entries: records[-1].offset + 1}
                await self._producer.send_offsets_to_transaction(offsets, self.group)
        for value in chained:
            if value["event_type"] == "audit.record":
                self._seen[value["entry"]["entry_id"]] = None
        while len(self._seen) > REMEMBER:
            self._seen.popitem(last=False)


async def _read(reader: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int) -> list[Any]:
    reader.seek(tp, start)
    out: list[Any] = []
    while await reader.position(tp) < end:
        for records in (await reader.getmany(tp, timeout_ms=500)).values():
            out.extend(r for r in records if r.offset < end)
    return out
