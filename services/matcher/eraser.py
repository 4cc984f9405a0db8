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
5. waits until every live replica (one that reported in `gallery.replicas` lately and has not
   stopped) says it has applied the erasure, at most `erasure_ack_timeout_s`;
6. publishes a receipt (`subject.erased`, signed) to `gallery.receipts`, keyed by subject: it
   names each replica's acknowledgement, and any live replica that gave none in time (it applies
   the erasure from the log all the same, before it serves again after a restart).

A request for a subject already erased, with nothing enrolled since, leaves the existing receipt
as it is (erasing twice gives the same receipt). A request for a subject the gallery does not hold
is carried out all the same (an enrolment of it may be in flight) and its receipt says so.

The retention sweeper runs in the member that holds the requests' partition 0: every
`retention_sweep_s` it requests the erasure (reason `retention_expired`) of each subject all of
whose terms have passed, and removes points whose own term has passed while another runs on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from facestream import audit, contracts
from facestream.config import Settings
from facestream.contracts.timeutil import iso_of, now_iso, parse_iso
from facestream.errors import RejectedEvent
from facestream.io.kafka import consumer, each_record, partition_reader, producer, read_to_end, read_topic
from facestream.ops.logs import get_logger
from facestream.runtime.stage import Record, dead_letter
from facestream.runtime.tasks import cancel
from facestream.services.matcher.keys import GalleryKeys
from facestream.services.matcher.logic import retention_due
from facestream.services.matcher.replica import FETCH_WAIT_MS, Replica

log = get_logger(__name__)
SWEEPER = "retention-sweeper"
_REQUESTS = uuid.UUID("0b7f6c52-93a4-4f43-a0f1-7d3c0f5e2a19")


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
        self._replicas: AIOKafkaConsumer | None = None
        self.replicas: dict[str, dict[str, Any]] = {}  # the latest report of each replica
        self._replicas_tp = TopicPartition(settings.topic("gallery.replicas"), 0)
        self._requested: set[str] = set()  # erasures the sweeper has asked for
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._producer = producer(self.settings)
        await self._producer.start()
        self._replicas = await partition_reader(self.settings, self._replicas_tp, FETCH_WAIT_MS)
        self._consumer = consumer(self.settings, "gallery.requests", group_id=self.group, enable_auto_commit=False)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        self._sweeper = asyncio.create_task(self._sweep_every())

    async def stop(self) -> None:
        await cancel(self._sweeper)
        await cancel(self._task)
        for client in (self._consumer, self._replicas, self._producer):
            if client is not None:
                await client.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        # Each step of an erasure can be repeated (tombstones and the erasure record are
        # idempotent): a request that failed half-way is done again.
        await each_record(self._consumer, self._handle, "erasure_failed")

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

    async def _read_replicas(self, wait_ms: int = 0) -> None:
        """The replicas' reports up to the end of their topic (waiting up to `wait_ms` for more)."""
        assert self._replicas is not None

        def keep(record: Any) -> None:
            if record.value is not None:
                report = orjson.loads(record.value)
                self.replicas[report["replica_id"]] = report

        await read_to_end(self._replicas, self._replicas_tp, keep, wait_ms)

    def _live(self) -> set[str]:
        """Replicas that reported lately and have not stopped."""
        window = max(3 * self.settings.replica_heartbeat_s, 5.0)
        now = time.time()
        return {
            rid
            for rid, r in self.replicas.items()
            if r["state"] != "stopped" and now - parse_iso(r["at"]).timestamp() <= window
        }

    async def acknowledgements(self, through: int) -> tuple[list[dict[str, Any]], list[str]]:
        """Each live replica's report that it has applied the gallery topic past offset `through`
        (this one's own first), waiting up to `erasure_ack_timeout_s`; and the live ones that
        gave none in time."""
        own = self.replica.replica_id
        mine = await self.replica.applied_through()
        acked = {own: {"replica_id": own, "applied_through": mine, "acknowledged_at": now_iso()}}
        await self._read_replicas()
        waiting = self._live() - {own}
        deadline = time.monotonic() + self.settings.erasure_ack_timeout_s
        while True:
            for rid in sorted(waiting):
                report = self.replicas[rid]
                if report["applied_through"] > through:
                    acked[rid] = {
                        "replica_id": rid,
                        "applied_through": report["applied_through"],
                        "acknowledged_at": report["at"],
                    }
                    waiting.discard(rid)
                elif report["state"] == "stopped":  # no longer live: it applies the erasure when it starts
                    waiting.discard(rid)
            if not waiting or time.monotonic() >= deadline:
                return sorted(acked.values(), key=lambda a: str(a["replica_id"])), sorted(waiting)
            await self._read_replicas(wait_ms=100)

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
        if not key_ids and not points:
            log.warning("erasure_of_unknown_subject", request_id=request["request_id"])
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
        written = await send(gallery, contracts.dumps(erasure), key=f"erasure/{subject}".encode())
        for point_id in points:  # 4. the points' records, for compaction
            await send(gallery, None, key=point_id.encode())
        await self.replica.sync()  # this replica has applied it too
        replicas, pending = await self.acknowledgements(written.offset)  # 5. and every live one
        if pending:
            log.warning("erasure_unacknowledged", request_id=request["request_id"], replicas=pending)
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
                "subject_was_held": bool(points or key_ids),
                "points_removed": len(points),
                "data_keys_destroyed": len(key_ids),
                "replicas": replicas,
                "replicas_pending": pending,
                "keys_destroyed_at": keys_destroyed_at,
                "transit_copies_expire_by": iso_of(expire),
            },
            self.keys,
        )
        contracts.validate("subject.erased", receipt)
        await send(self.settings.topic("gallery.receipts"), contracts.dumps(receipt), key=subject.encode())
        details = {k: receipt[k] for k in ("reason", "requested_by", "points_removed", "data_keys_destroyed")}
        entry = audit.entry(
            "erasure",
            "system:matcher",
            "matcher",
            request["request_id"],
            details={**details, "replicas_pending": len(pending), "subject_was_held": receipt["subject_was_held"]},
            subject_id=subject,
        )
        await audit.send(self.settings, self._producer, entry)
        return receipt

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_sweep_s)
            assert self._consumer is not None
            if TopicPartition(self.settings.topic("gallery.requests"), 0) not in self._consumer.assignment():
                continue  # another member sweeps
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the index or the broker failed: the next sweep tries again
                log.error("retention_sweep_failed", error=f"{type(exc).__name__}: {exc}"[:500])

    async def sweep(self, now: dt.datetime | None = None) -> tuple[list[str], list[str]]:
        """Request the erasure of each subject whose retention terms have all passed, and remove
        the points whose own term has passed; what was requested and removed."""
        assert self._producer is not None
        subjects, points, unreadable = retention_due(await self.replica.gallery.terms(), now or dt.datetime.now(dt.UTC))
        if unreadable:
            log.error("retention_term_unreadable", points=len(unreadable), first=unreadable[0])
        requested = []
        for subject, term in sorted(subjects.items()):
            request_id = uuid.uuid5(_REQUESTS, f"retention/{subject}/{term}").hex
            if request_id in self._requested:
                continue  # asked for already; the eraser has yet to get to it
            request = {
                "schema_version": 1,
                "event_type": "subject.erasure_requested",
                "request_id": request_id,
                "subject_id": subject,
                "reason": "retention_expired",
                "requested_by": SWEEPER,
                "requested_at": now_iso(),
            }
            contracts.validate("subject.erasure_requested", request)
            topic = self.settings.topic("gallery.requests")
            await self._producer.send_and_wait(topic, contracts.dumps(request), key=subject.encode())
            entry = audit.entry(
                "erasure_requested",
                f"system:{SWEEPER}",
                "matcher",
                request_id,
                details={"reason": "retention_expired", "requested_by": SWEEPER, "term": term},
                subject_id=subject,
            )
            await audit.send(self.settings, self._producer, entry)
            self._requested.add(request_id)
            requested.append(subject)
            log.info("retention_expired", request_id=request_id, term=term)
        for point_id in points:  # the subject stays (under a later term): only this point goes
            await self._producer.send_and_wait(self.settings.topic("gallery"), None, key=point_id.encode())
            log.info("gallery_point_expired", point_id=point_id)
        if requested or points:
            entry = audit.entry(
                "retention_sweep",
                f"system:{SWEEPER}",
                "matcher",
                f"{now_iso()}/{','.join(requested)}/{','.join(points)}",
                details={"subjects_expired": len(requested), "points_expired": len(points)},
            )
            await audit.send(self.settings, self._producer, entry)
        return requested, points
