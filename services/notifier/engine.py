"""The delivery engine: takes webhook.delivery jobs from `deliveries` and the retry tiers, and
attempts each one in its subscriber's lane.

Why not a faust stream: deliveries to different subscribers share partitions, and a slow
subscriber must not hold up the others. The engine therefore acknowledges out of order: every
job is handed to its subscriber's lane (bounded concurrency and rate) at once, and a partition's
committed offset advances to the oldest job whose outcome is not yet durable (delivered and
logged, moved to a retry tier, or dead-lettered). A crash redelivers only unfinished jobs; the
webhook id is unchanged, so the subscriber de-duplicates.

Retry tiers hold jobs that all wait the same delay, so each partition is in due order: when the
head job is not due yet, the engine pauses that partition and resumes it at the due time
(no sleeping consumers, no lost place on restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from facestream import contracts
from facestream.config import Settings
from facestream.contracts.timeutil import iso, now_iso, parse_iso
from facestream.errors import MalformedEvent
from facestream.io.kafka import MAX_REQUEST, connection, create_topics, read_topic
from facestream.io.net import guarded_client
from facestream.ops.logs import get_logger
from facestream.ops.metrics import (
    END_TO_END_SECONDS,
    SUBSCRIPTION_DISABLED,
    WEBHOOK_OUTCOMES,
    WEBHOOK_SECONDS,
    WEBHOOKS,
    status_class,
)
from facestream.runtime.stage import Record, dead_letter
from facestream.services.notifier.logic import Verdict, attempt, next_delay
from facestream.services.notifier.subscriptions import Subscription, SubscriptionStore
from facestream.services.notifier.topics import dlq_spec, dlq_topic, retry_topics

log = get_logger(__name__)
OUTCOMES = ("delivered", "retry_scheduled", "dead_lettered", "deferred", "dropped")  # delivery.attempt's
GONE = "endpoint answered 410 Gone"  # how a subscription disabled by its endpoint's 410 is marked


class Offsets:
    """Per partition: offsets handed out and not finished, and the next offset to read. The
    committable offset is the oldest unfinished one (or the next to read when none is)."""

    def __init__(self) -> None:
        self.open: dict[TopicPartition, set[int]] = {}
        self.next: dict[TopicPartition, int] = {}

    def begin(self, tp: TopicPartition, offset: int) -> None:
        self.open.setdefault(tp, set()).add(offset)
        self.next[tp] = max(self.next.get(tp, 0), offset + 1)

    def skip(self, tp: TopicPartition, offset: int) -> None:
        self.next[tp] = max(self.next.get(tp, 0), offset + 1)

    def finish(self, tp: TopicPartition, offset: int) -> None:
        self.open.get(tp, set()).discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: min(self.open.get(tp) or {nxt}) for tp, nxt in self.next.items()}

    def forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self.open.pop(tp, None)
            self.next.pop(tp, None)


class TokenBucket:
    """At most `rate` requests a second on average, bursts of up to `rate` (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = time.monotonic()

    async def take(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass
class Lane:
    """One subscriber's share of a worker: its own concurrency and rate limits."""

    concurrency: int
    rate: float
    pending: int = 0
    slots: asyncio.Semaphore = field(init=False)
    bucket: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.concurrency)
        self.bucket = TokenBucket(self.rate)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: DeliveryEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.engine.commit()
        self.engine.release(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


class DeliveryEngine:
    def __init__(
        self,
        settings: Settings,
        store: SubscriptionStore,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.clock = clock
        self.tiers = retry_topics(settings)
        # Every retry topic there is, not only the current schedule's: a schedule changed while
        # retries wait in a tier it no longer has strands none of them.
        self.sources = rf"^{re.escape(settings.topic('deliveries'))}(\.retry\.[0-9a-z]+)?$"
        self.offsets = Offsets()
        self.lanes: dict[str, Lane] = {}
        self.waiting: dict[TopicPartition, asyncio.TimerHandle] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        # (subscription, webhook id) -> when delivered, within the event TTL; see _load_delivered.
        self.delivered: dict[tuple[str, str], float] = {}
        self.ensured: set[str] = set()
        self._producer = store.producer  # started and stopped with the store
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        store.listeners.append(self._watch)

    @staticmethod
    def _watch(sub: Subscription | None, name: str) -> None:
        """Keep the subscription's series: each outcome counted from 0 (so that a rate or an
        increase sees the first one), and whether it is disabled, by its endpoint or an operator."""
        for by in ("gone", "operator"):
            with contextlib.suppress(KeyError):
                SUBSCRIPTION_DISABLED.remove(name, by)
        if sub is None:
            for outcome in OUTCOMES:
                with contextlib.suppress(KeyError):
                    WEBHOOK_OUTCOMES.remove(name, outcome)
            return
        for outcome in OUTCOMES:
            WEBHOOK_OUTCOMES.labels(name, outcome)
        gone = not sub.active and sub.disabled_reason.startswith(GONE)
        SUBSCRIPTION_DISABLED.labels(name, "gone").set(1 if gone else 0)
        SUBSCRIPTION_DISABLED.labels(name, "operator").set(1 if not sub.active and not gone else 0)

    async def start(self) -> None:
        if self.client is None:
            self.client = guarded_client(
                self.settings.webhook_allow_private, self.settings.webhook_timeout_s, setting="webhook_allow_private"
            )
        self._consumer = AIOKafkaConsumer(
            **connection(self.settings),
            group_id=f"{self.settings.app_id}-deliveries",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_REQUEST,
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(max(0.5, self.settings.session_timeout_s / 10) * 1000),
        )
        await self._load_delivered()
        self._consumer.subscribe(pattern=self.sources, listener=_Rebalance(self))
        await self._consumer.start()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._commit_every(1.0))]

    async def _load_delivered(self) -> None:
        """The webhook ids the delivery log shows delivered within the event TTL (older jobs
        expire anyway): a job for one of them (work redone after a crash, a match fanned out
        again) is not sent a second time."""
        since = self.clock() - self.settings.webhook_event_ttl_s
        for record in await read_topic(self.settings, self.settings.topic("deliveries.log"), since=since):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = orjson.loads(record.value)
                if entry["outcome"] == "delivered":
                    at = parse_iso(entry["at"]).timestamp()
                    self.delivered[(entry["subscription"], entry["webhook_id"])] = at

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Attempts under way finish (bounded by the request timeout) so their outcomes are kept.
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=self.settings.webhook_timeout_s + 5)
            for task in list(self.inflight):  # still hanging: redone by whoever takes the partition
                task.cancel()
        for handle in self.waiting.values():
            handle.cancel()
        if self._consumer is not None:
            # Bounded: with the broker away these would wait for it; what is not committed is
            # redone by whoever takes the partitions (webhook ids unchanged).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.commit(), 5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), 10)
        if self.client is not None:
            await self.client.aclose()

    async def commit(self) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        offsets = {tp: off for tp, off in self.offsets.committable().items() if tp in assigned}
        if offsets:
            await self._consumer.commit(offsets)

    def release(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            handle = self.waiting.pop(tp, None)
            if handle is not None:
                handle.cancel()
        self.offsets.forget(revoked)

    def _forget_expired(self) -> None:
        """Delivered ids past the event TTL: their jobs are dead-lettered as expired anyway."""
        cutoff = self.clock() - self.settings.webhook_event_ttl_s
        for key in [k for k, at in self.delivered.items() if at < cutoff]:
            del self.delivered[key]

    async def _commit_every(self, seconds: float) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(seconds)
            rounds += 1
            if rounds % 600 == 0:
                self._forget_expired()
            try:
                await self.commit()
            except Exception as exc:  # a rebalance in progress; the next round commits
                log.warning("delivery_commit_failed", error=str(exc)[:200])

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: keep trying; unfinished jobs stay uncommitted
                log.error("delivery_engine_error", error=str(exc)[:300])
                await asyncio.sleep(1.0)
                continue
            failed = False
            for tp, records in batch.items():
                for record in records:
                    try:
                        if tp in self.waiting or not await self._accept(tp, record):
                            break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        # This record and the rest of its partition's share are read again: the
                        # consumer's position has moved past them, and skipping them would let a
                        # later commit pass jobs nobody did.
                        self._consumer.seek(tp, record.offset)
                        log.error("delivery_accept_failed", topic=tp.topic, offset=record.offset, error=repr(exc)[:300])
                        failed = True
                        break
            if failed:
                await asyncio.sleep(1.0)

    async def _accept(self, tp: TopicPartition, record: Any) -> bool:
        """Hand one record to its lane; False when it is not due (its partition now waits)."""
        assert self._consumer is not None
        try:
            job = contracts.loads(record.value, "webhook.delivery")
        except MalformedEvent as exc:
            await self._bad_record(tp, record, exc)
            self.offsets.skip(tp, record.offset)
            return True
        wait = parse_iso(job["due_at"]).timestamp() - self.clock()
        if wait > 0:
            self._consumer.pause(tp)
            self._consumer.seek(tp, record.offset)
            self.waiting[tp] = asyncio.get_running_loop().call_later(wait, self._resume, tp)
            return False
        self.offsets.begin(tp, record.offset)
        lane = self._lane(self.store.get(job["subscription"]))
        deferred = lane.pending >= self.settings.webhook_max_pending
        self._launch(tp, record.offset, lane, job, deferred, delay=0.0)
        return True

    def _launch(
        self, tp: TopicPartition, offset: int, lane: Lane, job: dict[str, Any], deferred: bool, delay: float
    ) -> None:
        """Work on one job until its outcome is durable. If recording the outcome fails (the
        broker away), the job is done again after a pause (the same webhook id, so a receiver that
        already has it ignores it) rather than left open, which would hold its partition's commits."""
        lane.pending += 1

        async def work() -> None:
            if delay:
                await asyncio.sleep(delay)
            await (self._defer(job) if deferred else self._deliver(lane, job))

        task = asyncio.create_task(work())
        self.inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.inflight.discard(t)
            lane.pending -= 1
            if t.cancelled():  # stopping: left open, redone by whoever takes the partition
                return
            error = t.exception()
            if error is None:
                self.offsets.finish(tp, offset)
                return
            log.error("delivery_outcome_not_recorded", webhook_id=job["webhook_id"], error=repr(error)[:300])
            if not self._stopping and tp in self.offsets.next:  # still ours: again, waiting longer each time
                self._launch(tp, offset, lane, job, deferred, delay=min(max(delay * 2, 1.0), 60.0))

        task.add_done_callback(done)

    def _resume(self, tp: TopicPartition) -> None:
        self.waiting.pop(tp, None)
        if self._consumer is not None and tp in self._consumer.assignment():
            self._consumer.resume(tp)

    def _lane(self, sub: Subscription | None) -> Lane:
        if sub is None:
            return self.lanes.setdefault("", Lane(1, 0))
        lane = self.lanes.get(sub.name)
        if lane is None or (lane.concurrency, lane.rate) != (sub.max_concurrency, sub.rate_per_s):
            lane = self.lanes[sub.name] = Lane(sub.max_concurrency, sub.rate_per_s)
        return lane

    async def _bad_record(self, tp: TopicPartition, record: Any, exc: Exception) -> None:
        letter = dead_letter("notifier", Record(record.value, record.key, tp.topic, tp.partition, record.offset), exc)
        await self._producer.send_and_wait(self.settings.topic("dlq"), contracts.dumps(letter), key=record.key)

    # Outcomes. Each is durable (acknowledged by the broker) before the job counts as finished.

    async def _deliver(self, lane: Lane, job: dict[str, Any]) -> None:
        name = job["subscription"]
        sub = self.store.get(name)
        if sub is None:
            await self._log(job, "dropped", reason="subscription_removed")
            return
        if not sub.active:
            await self._dead(job, "subscription_disabled", sub.disabled_reason)
            return
        if parse_iso(job["expires_at"]).timestamp() <= self.clock():
            await self._dead(job, "expired", f"not delivered before {job['expires_at']}")
            return
        if (name, job["webhook_id"]) in self.delivered:
            await self._log(job, "dropped", reason="already_delivered")
            return
        async with lane.slots:
            await lane.bucket.take()
            assert self.client is not None
            started = time.perf_counter()
            verdict = await attempt(self.client, sub, job)
            latency = time.perf_counter() - started
        number = job["attempt"] + 1
        WEBHOOKS.labels(name, status_class(verdict.status)).inc()
        WEBHOOK_SECONDS.labels(name).observe(latency)
        job = {**job, "attempt": number, "last_status": verdict.status, "last_error": verdict.error}
        if verdict.outcome == "delivered":
            await self._log(job, "delivered", verdict, latency)
            self.delivered[(name, job["webhook_id"])] = self.clock()
            if "submitted_at" in job:
                END_TO_END_SECONDS.observe(max(0.0, time.time() - parse_iso(job["submitted_at"]).timestamp()))
            log.info("delivered", subscription=name, webhook_id=job["webhook_id"], trace_id=job.get("trace_id"))
            return
        log.warning(
            "delivery_attempt_failed",
            subscription=name,
            webhook_id=job["webhook_id"],
            attempt=number,
            reason=verdict.reason,
            error=verdict.error,
        )
        if verdict.outcome == "gone":
            await self.store.disable(name, f"{GONE} at {now_iso()}")
            await self._dead(job, "gone", verdict.error, verdict, latency)
        elif verdict.outcome == "retry":
            delay = next_delay(self.settings.webhook_schedule_s, number, verdict.retry_after_s)
            if delay is None:
                await self._dead(job, "exhausted", f"{number} attempts, last: {verdict.error}", verdict, latency)
            else:
                await self._retry(job, delay, verdict, latency)
        else:
            await self._dead(job, verdict.reason, verdict.error, verdict, latency)

    async def _retry(self, job: dict[str, Any], delay: float, verdict: Verdict | None, latency: float | None) -> None:
        # Up to 10% jitter, as Standard Webhooks advises: retries after an outage spread out
        # instead of all falling due at once. Always later, never earlier than the schedule.
        due = iso(self.clock() + delay * (1 + random.uniform(0, 0.1)))
        # The job in its tier and the log entry go to the broker together.
        moved = await self._producer.send(
            self.tiers[delay], contracts.dumps({**job, "due_at": due}), key=job["subscription"].encode()
        )
        outcome = "retry_scheduled" if verdict is not None else "deferred"
        reason = verdict.reason if verdict else "busy"
        await asyncio.gather(moved, self._log(job, outcome, verdict, latency, next_attempt_at=due, reason=reason))

    async def _defer(self, job: dict[str, Any]) -> None:
        """Too many jobs waiting for this subscriber in this worker: park it in the first retry
        tier without spending an attempt, so the partition keeps moving for the others."""
        await self._retry(job, min(self.tiers), None, None)

    async def _dead(
        self,
        job: dict[str, Any],
        reason: str,
        detail: str | None,
        verdict: Verdict | None = None,
        latency: float | None = None,
    ) -> None:
        topic = dlq_topic(self.settings, job["subscription"])
        if topic not in self.ensured:
            await create_topics(self.settings, [dlq_spec(self.settings, job["subscription"])])
            self.ensured.add(topic)
        letter = {**job, "reason": reason, "dead_at": now_iso(), "last_error": (detail or "")[:500] or None}
        parked = await self._producer.send(topic, contracts.dumps(letter), key=job["subscription"].encode())
        await asyncio.gather(parked, self._log(job, "dead_lettered", verdict, latency, reason=reason, error=detail))
        log.warning(
            "delivery_dead_lettered", subscription=job["subscription"], webhook_id=job["webhook_id"], reason=reason
        )

    async def _log(
        self,
        job: dict[str, Any],
        outcome: str,
        verdict: Verdict | None = None,
        latency: float | None = None,
        *,
        reason: str | None = None,
        error: str | None = None,
        next_attempt_at: str | None = None,
    ) -> None:
        WEBHOOK_OUTCOMES.labels(job["subscription"], outcome).inc()
        entry = {
            "schema_version": 1,
            "event_type": "delivery.attempt",
            "webhook_id": job["webhook_id"],
            "subscription": job["subscription"],
            "event_id": job["event_id"],
            "attempt": job["attempt"] if verdict is not None else 0,
            "outcome": outcome,
            "reason": reason if reason is not None else (verdict.reason or None if verdict else None),
            "http_status": verdict.status if verdict else None,
            "latency_ms": round(latency * 1000, 1) if latency is not None else None,
            "error": ((error or (verdict.error if verdict else None)) or "")[:500] or None,
            "next_attempt_at": next_attempt_at,
            "at": now_iso(),
        }
        await self._producer.send_and_wait(
            self.settings.topic("deliveries.log"), contracts.dumps(entry), key=job["subscription"].encode()
        )
