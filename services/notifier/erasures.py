"""Erasure notices: when a subject is erased, every subscriber that was sent a match naming it gets
a signed `face.subject.erased` webhook, through the same delivery engine, so that case systems
purge their copies (whatever event types the subscription asked for: the copies are there).

A consumer group (`<app_id>-erasure-notices`) reads the erasure receipts (`gallery.receipts`,
written by the matcher's eraser). For each, it looks up in `deliveries.subjects` who was sent the
subject, writes one delivery job per subscriber (the webhook id comes from the erasure request,
so a redelivered receipt gives the same webhook), then removes those entries: once the
subscribers are told, the platform no longer needs to know who was sent whom. The receipt's
offset is committed after all of that is on the broker; a crash in between repeats it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from facestream import contracts
from facestream.config import Settings
from facestream.errors import RejectedEvent
from facestream.io.kafka import consumer, each_record, producer, read_topic
from facestream.ops.logs import get_logger
from facestream.runtime.stage import Record, dead_letter
from facestream.runtime.tasks import cancel
from facestream.services.notifier.logic import erased_payload, job_for
from facestream.services.notifier.subscriptions import SubscriptionStore

log = get_logger(__name__)


async def notified(settings: Settings, subject: str) -> dict[str, str]:
    """The subscriptions sent a match naming `subject` (and not yet told of its erasure): the
    `deliveries.subjects` key of each, by subscription."""
    latest: dict[str, bytes | None] = {}
    for record in await read_topic(settings, settings.topic("deliveries.subjects")):
        latest[record.key.decode()] = record.value
    found = {}
    for key, value in latest.items():
        if value is not None:
            entry = orjson.loads(value)
            if entry["subject_id"] == subject:
                found[entry["subscription"]] = key
    return found


class ErasureNotices:
    def __init__(self, settings: Settings, store: SubscriptionStore) -> None:
        self.settings = settings
        self.store = store
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._producer = producer(self.settings)
        await self._producer.start()
        group = f"{self.settings.app_id}-erasure-notices"
        self._consumer = consumer(self.settings, "gallery.receipts", group_id=group, enable_auto_commit=False)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        await each_record(self._consumer, self._handle, "erasure_notice_failed")

    async def _handle(self, record: Any) -> None:
        assert self._producer is not None
        if record.value is None:
            return  # a receipt removed by compaction's tombstone: nothing to tell
        try:
            receipt = contracts.loads(record.value, "subject.erased")
        except RejectedEvent as exc:  # not a receipt the eraser wrote: to the dead letters
            refused = Record(record.value, record.key, record.topic, record.partition, record.offset)
            letter = dead_letter("notifier", refused, exc)
            await self._producer.send_and_wait(
                self.settings.topic("dlq"), contracts.dumps(letter), key=refused.key_bounded
            )
            return
        told = await self.notify(receipt)
        log.info("erasure_notices_sent", request_id=receipt["request_id"], subscriptions=sorted(told))

    async def notify(self, receipt: dict[str, Any]) -> list[str]:
        """Write the notices of one erasure; the subscriptions they go to."""
        assert self._producer is not None
        entries = await notified(self.settings, receipt["subject_id"])
        payload = erased_payload(receipt)
        sent = []
        for name in sorted(entries):
            sub = self.store.get(name)
            if sub is None:
                continue  # removed since: nobody to tell
            job = job_for(payload, sub, payload)
            contracts.validate("webhook.delivery", job)
            await self._producer.send_and_wait(
                self.settings.topic("deliveries"), contracts.dumps(job), key=name.encode()
            )
            sent.append(name)
        for key in entries.values():
            await self._producer.send_and_wait(self.settings.topic("deliveries.subjects"), None, key=key.encode())
        return sent
