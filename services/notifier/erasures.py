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

from typing import Any

import orjson

from facestream import contracts
from facestream.config import Settings
from facestream.errors import RejectedEvent
from facestream.io.kafka import read_topic
from facestream.ops.logs import get_logger
from facestream.services.notifier.logic import erased_payload, job_for
from facestream.services.notifier.notices import NoticeFollower

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


class ErasureNotices(NoticeFollower):
    topic = "gallery.receipts"
    name = "erasure-notices"

    async def handle(self, record: Any) -> None:
        if record.value is None:
            return  # a receipt removed by compaction's tombstone: nothing to tell
        try:
            receipt = contracts.loads(record.value, "subject.erased")
        except RejectedEvent as exc:  # not a receipt the eraser wrote: to the dead letters
            await self.refuse(record, exc)
            return
        told = await self.notify(receipt)
        log.info("erasure_notices_sent", request_id=receipt["request_id"], subscriptions=sorted(told))

    async def notify(self, receipt: dict[str, Any]) -> list[str]:
        """Write the notices of one erasure; the subscriptions they go to."""
        entries = await notified(self.settings, receipt["subject_id"])
        payload = erased_payload(receipt)
        sent = []
        for name in sorted(entries):
            sub = self.store.get(name)
            if sub is None:
                continue  # removed since: nobody to tell
            job = job_for(payload, sub, payload)
            contracts.validate("webhook.delivery", job)
            await self.out.send_and_wait(self.settings.topic("deliveries"), contracts.dumps(job), key=name.encode())
            sent.append(name)
        for key in entries.values():
            await self.out.send_and_wait(self.settings.topic("deliveries.subjects"), None, key=key.encode())
        return sent
