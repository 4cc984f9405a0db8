"""Erasure: a subject's data keys destroyed, its points removed from every index, a signed receipt.

Requests (`subject.erasure_requested`) arrive on `gallery.requests`, from `facestream gallery erase`
or from an upstream system, the way it enrols. One consumer group across the matcher workers (the
eraser) takes each request and, in this order:

1. brings its replica up to date (every point and data key written so far is known);
2. destroys the subject's data keys (tombstones in `gallery.keys`): from then on no copy of the
   subject's embeddings anywhere in Kafka can be decrypted, before compaction has run;
3. writes the erasure to the gallery topic (`gallery.erasure`, kept): every replica removes the
   subject's points when it applies it, and ignores points of enrolments submitted at or before
   the request that arrive later (in flight when it was made), also when it rebuilds;
4. writes a tombstone for each of the subject's points (compaction then removes the records);
5. publishes a receipt (`subject.erased`, signed) to `gallery.receipts`, keyed by subject.

A request for a subject already erased, with nothing enrolled since, leaves the existing receipt
as it is (erasing twice gives the same receipt).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from facestream import contracts
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso, parse_iso
from facestream.errors import RejectedEvent
from facestream.io.kafka import consumer, producer, read_topic
from facestream.ops.logs import get_logger
from facestream.runtime.stage import Record, dead_letter
from facestream.runtime.tasks import cancel
from facestream.services.matcher.keys import GalleryKeys
from facestream.services.matcher.replica import Replica

log = get_logger(__name__)


def canonical(receipt: dict[str, Any]) -> bytes:
    """What a receipt's signature covers: the receipt without its signature, keys sorted."""
    return orjson.dumps({k: v for k, v in receipt.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS)


def sign(receipt: dict[str, Any], keys: GalleryKeys) -> dict[str, Any]:
    value = hmac.new(keys.signers[0], canonical(receipt), hashlib.sha256).hexdigest()
    return {**receipt, "signature": {"alg": "HMAC-SHA256", "signer": keys.signer_id, "value": value}}


def verify(receipt: dict[str, Any], keys: GalleryKeys) -> bool:
    """Whether the receipt is unchanged since a holder of one of the gallery keys signed it."""
    given = receipt.get("signature", {}).get("value", "")
    body = canonical(receipt)
    return any(hmac.compare_digest(hmac.new(k, body, hashlib.sha256).hexdigest(), given) for k in keys.signers)


async def receipts(settings: Settings) -> dict[str, dict[str, Any]]:
    """The latest receipt per subject."""
    found: dict[str, dict[str, Any]] = {}
    for record in await read_topic(settings, settings.topic("gallery.receipts")):
        if record.value is not None:
            receipt = orjson.loads(record.value)
            found[receipt["subject_id"]] = receipt
    return found


class Eraser:
    def __init__(self, settings: Settings, replica: Replica, keys: GalleryKeys) -> None:
        self.settings = settings
        self.replica = replica
        self.keys = keys
        self.group = f"{settings.app_id}-gallery-eraser"
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._producer = producer(self.settings)
        await self._producer.start()
        self._consumer = consumer(self.settings, "gallery.requests", group_id=self.group, enable_auto_commit=False)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        await self._handle(record)
                        await self._consumer.commit({tp: record.offset + 1})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker or the index failed: the request is tried again
                log.error("erasure_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                await asyncio.sleep(1.0)
                await self._rewind()

    async def _rewind(self) -> None:
        """Go back to the committed position: a request that failed half-way is done again (each
        step can be repeated: tombstones and the erasure record are idempotent)."""
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            committed = await self._consumer.committed(tp)
            if committed is not None:
                self._consumer.seek(tp, committed)

    async def _handle(self, record: Any) -> None:
        try:
            request = contracts.loads(record.value, "subject.erasure_requested")
        except RejectedEvent as exc:  # a malformed request: to the dead letters with its reason
            assert self._producer is not None
            refused = Record(record.value, record.key, record.topic, record.partition, record.offset)
            letter = dead_letter("matcher", refused, exc)
            key = refused.key_bounded
            await self._producer.send_and_wait(self.settings.topic("dlq"), contracts.dumps(letter), key=key)
            log.warning("erasure_request_refused", reason=letter["reason"], detail=letter["detail"][:300])
            return
        receipt = await self.erase(request)
        if receipt is not None:
            log.info("subject_erased", request_id=request["request_id"], points_removed=receipt["points_removed"])

    async def erase(self, request: dict[str, Any]) -> dict[str, Any] | None:
        assert self._producer is not None
        subject = request["subject_id"]
        await self.replica.sync_keys()
        await self.replica.sync()
        key_ids = sorted(self.replica.ring.key_ids(subject))
        points = await self.replica.gallery.point_ids(subject)
        erased_at = self.replica.erased.get(subject)
        if not key_ids and not points and erased_at is not None:
            return None  # erased already, nothing enrolled since: the receipt there stands
        send = self._producer.send_and_wait
        for key_id in key_ids:  # 2. the keys first
            await send(self.settings.topic("gallery.keys"), None, key=f"{subject}/{key_id}".encode())
        keys_destroyed_at = now_iso()
        erasure = {  # 3. the erasure, for every replica
            "schema_version": 1,
            "event_type": "gallery.erasure",
            "request_id": request["request_id"],
            "subject_id": subject,
            "reason": request["reason"],
            "requested_by": request["requested_by"],
            "requested_at": request["requested_at"],
        }
        gallery = self.settings.topic("gallery")
        await send(gallery, contracts.dumps(erasure), key=f"erasure/{subject}".encode())
        for point_id in points:  # 4. the points' records, for compaction
            await send(gallery, None, key=point_id.encode())
        await self.replica.sync()  # this replica has applied it too
        expire = parse_iso(request["requested_at"]) + dt.timedelta(hours=self.settings.transit_retention_hours)
        receipt = sign(
            {
                "schema_version": 1,
                "event_type": "subject.erased",
                "request_id": request["request_id"],
                "subject_id": subject,
                "reason": request["reason"],
                "requested_by": request["requested_by"],
                "requested_at": request["requested_at"],
                "completed_at": now_iso(),
                "points_removed": len(points),
                "data_keys_destroyed": len(key_ids),
                "keys_destroyed_at": keys_destroyed_at,
                "transit_copies_expire_by": expire.isoformat().replace("+00:00", "Z"),
            },
            self.keys,
        )
        contracts.validate("subject.erased", receipt)
        await send(self.settings.topic("gallery.receipts"), contracts.dumps(receipt), key=subject.encode())
        return receipt
