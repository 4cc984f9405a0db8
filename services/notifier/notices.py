"""What the notifier's notice followers share (erasures.py, reviews.py): a consumer group on one
topic whose records become delivery jobs, each committed once its jobs are on the broker, and a
record that is not the event it should be sent to the dead letters with its reason."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from facestream import contracts
from facestream.config import Settings
from facestream.errors import RejectedEvent
from facestream.io.kafka import close, consumer, each_record, producer
from facestream.runtime.stage import Record, dead_letter
from facestream.runtime.tasks import cancel
from facestream.services.notifier.subscriptions import SubscriptionStore


class NoticeFollower:
    """Follows `topic` (short name) in the consumer group `<app_id>-<name>`; subclasses `handle`
    each record and may `prepare` before the group starts."""

    topic = ""
    name = ""

    def __init__(self, settings: Settings, store: SubscriptionStore) -> None:
        self.settings = settings
        self.store = store
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def out(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._producer

    async def start(self) -> None:
        self._producer = producer(self.settings)
        await self._producer.start()
        await self.prepare()
        group = f"{self.settings.app_id}-{self.name}"
        self._consumer = consumer(self.settings, self.topic, group_id=group, enable_auto_commit=False)
        await self._consumer.start()
        self._task = asyncio.create_task(each_record(self._consumer, self.handle, f"{self.name}_failed"))

    async def stop(self) -> None:
        await cancel(self._task)
        await close(self._consumer, self._producer)

    async def prepare(self) -> None:
        return None

    async def handle(self, record: Any) -> None:
        raise NotImplementedError

    async def refuse(self, record: Any, error: RejectedEvent) -> None:
        """Send `record` to the dead letters with `error`'s reason."""
        refused = Record(record.value, record.key, record.topic, record.partition, record.offset)
        letter = dead_letter("notifier", refused, error)
        await self.out.send_and_wait(self.settings.topic("dlq"), contracts.dumps(letter), key=refused.key_bounded)
