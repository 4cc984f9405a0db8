"""The faust application: topics and one thin agent per service.

Each agent takes a batch from its stream, hands it to the service's stage (plain logic, no
Kafka), produces the outputs and dead letters, and waits until the broker has acknowledged all
of them. Only then does a record count as processed, so offsets are committed after the outputs
exist (at-least-once; downstream ids are deterministic, so redelivery duplicates nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import faust

from facestream.config import Settings
from facestream.io.kafka import MAX_REQUEST, METADATA_MAX_AGE_MS, TOPICS, ssl_context
from facestream.ops.logs import bind_event, get_logger
from facestream.ops.metrics import EVENTS_CONSUMED, STAGE_SECONDS, TRANSIENT_RETRIES
from facestream.ops.server import Health, OpsServer
from facestream.runtime.acks import InOrderAcks, Ticket
from facestream.runtime.compute import ModelPool
from facestream.runtime.emit import Emitter
from facestream.runtime.service import Server, Service, own_topics, runnable, scheduled_topics
from facestream.runtime.stage import Outcome, Record, Stage, screen

log = get_logger(__name__)


def _headers(raw: Any) -> dict[str, bytes]:
    if not raw:
        return {}
    items = raw.items() if isinstance(raw, dict) else raw
    return {str(k): (v if isinstance(v, bytes) else str(v).encode()) for k, v in items}


def app_id_for(settings: Settings, services: Sequence[Service], everything: int) -> str:
    """One consumer group for the whole pipeline in one process (`everything` services), one per
    combination of services otherwise."""
    if len(services) == everything:
        return settings.app_id
    return f"{settings.app_id}-{'-'.join(s.name for s in services)}"


def consumer_groups(
    settings: Settings, services: Sequence[Service], catalogue: Sequence[Service]
) -> dict[str, list[str]]:
    """The consumer groups a worker running `services` uses (out of all those in `catalogue`),
    each with the full names of the topics it reads: its agents' group and the services' own."""
    agents = app_id_for(settings, runnable(services), len(runnable(catalogue)))
    groups = {agents: [settings.topic(s.source) for s in services if s.source]}
    for service in services:
        groups.update(service.groups(settings))
    return groups


def _own_topics(settings: Settings, services: Sequence[Service]) -> list[str]:
    """Short names of the topics the services own (stages may write to them: the notifier's jobs)."""
    prefix = f"{settings.topic_prefix}."
    return [spec.name.removeprefix(prefix) for spec in own_topics(settings, services)]


def leader_topic(app_id: str) -> str:
    """faust's leader election topic of the app `app_id`: created by the worker (the app may not
    declare topics), also the one subscription of a worker without agents (the API's)."""
    return f"{app_id}-__assignor-__leader"


def credentials(settings: Settings) -> faust.auth.Credentials | None:
    """The faust app's TLS and SASL, the same as every other Kafka client's (io.kafka.connection)."""
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_username,
            password=settings.kafka_password.get_secret_value(),
            ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return None


def create_app(
    settings: Settings,
    services: Sequence[Service],
    catalogue: Sequence[Service],
    executor: Executor,
) -> faust.App:
    """The faust app running `services` (out of `catalogue`, all there are); model work goes to
    `executor` (see facestream.runtime.compute)."""
    groups = consumer_groups(settings, services, catalogue)
    app_id = next(iter(groups))
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        topic_allow_declare=False,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 10),
        producer_acks=-1,
        producer_max_request_size=MAX_REQUEST,
        consumer_max_fetch_size=MAX_REQUEST,
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,  # see there: a topic unassigned after a broker restart
        datadir=str(settings.data_dir / "faust" / app_id),
        broker_credentials=credentials(settings),
        topic_replication_factor=settings.kafka_replication_factor,
    )
    topics = {
        name: app.topic(
            settings.topic(name), key_type=bytes, value_type=bytes, partitions=settings.partitions, internal=False
        )
        for name in (*TOPICS, "crops", "audit.entries", *_own_topics(settings, services))
    }

    async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Which pipeline partitions this worker serves now (the rest are faust's own): the
        # signal's argument is the set of TopicPartitions assigned.
        tps = args[0] if args else set()
        mine = sorted(f"{tp.topic}/{tp.partition}" for tp in tps if tp.topic.startswith(f"{settings.topic_prefix}."))
        log.info("partitions_assigned", partitions=mine)

    app.on_partitions_assigned.connect(assigned)
    health = Health(["kafka", *(s.name for s in runnable(services))])
    if isinstance(executor, ModelPool):
        health.check("models", lambda: executor.ready)
    for service in services:
        if service.stage is not None:
            _register(app, service, topics, settings, executor, health)
        if service.server is not None:
            build = functools.partial(service.server, settings, catalogue)
            app.task(functools.partial(_serve, service.name, build, health))
    if settings.ops_port >= 0:
        stages = {s.name: s.source for s in services if s.source}
        ops = OpsServer(settings, groups, stages, health, scheduled_topics(settings, services))
        app.task(ops.run)
    return app


def _register(
    app: faust.App,
    service: Service,
    topics: dict[str, Any],
    settings: Settings,
    executor: Executor,
    health: Health,
) -> None:
    name = service.name
    build = service.stage
    assert build is not None

    async def send(topic: str, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> Any:
        return await topics[topic].send(key=key, value=value, headers=headers)

    emitter = Emitter(name, send)

    async def handle(stage: Stage, records: list[Record]) -> None:
        started = time.perf_counter()
        screened = [screen(r) for r in records]
        admitted = [r for r, problem in zip(records, screened, strict=True) if problem is None]
        results = iter(await _process(stage, admitted, settings) if admitted else [])
        outcomes = [Outcome(error=problem) if problem is not None else next(results) for problem in screened]
        EVENTS_CONSUMED.labels(name).inc(len(records))
        per_event = (time.perf_counter() - started) / len(records)
        for _ in records:
            STAGE_SECONDS.labels(name).observe(per_event)
        await emitter.emit(records, outcomes)

    async def agent(stream: Any) -> None:
        # The agent runs in its own task: every line it (and tasks it starts) logs names the stage.
        bind_event(stage=name)
        stage = build(settings, executor)
        try:
            await stage.start()
        except Exception as exc:
            # A stage that cannot start (a wrong key, a missing model) must not leave a worker
            # that looks alive and processes nothing: end it, saying why.
            log.critical("stage_cannot_start", stage=name, error=f"{type(exc).__name__}: {exc}"[:1000])
            os._exit(78)  # EX_CONFIG
        health.set(name, True)
        log.info("stage_started", stage=name)
        # Nothing is acknowledged by faust: a record is acknowledged here once its outputs or its
        # dead letter are on the broker, and only after every record before it in its partition
        # (see facestream.runtime.acks), so a commit never passes work that is not done.
        acks = InOrderAcks(stream.ack, lambda event: event.message.tp)
        slots = asyncio.Semaphore(settings.records_in_flight if service.independent else 1)
        running: set[asyncio.Task[None]] = set()

        async def work(tickets: list[Ticket], records: list[Record]) -> None:
            try:
                await handle(stage, records)
            except Exception as exc:
                # Unacknowledged, the record would hold its partition's commits for good: end the
                # worker instead; the restart redelivers it (deterministic ids: nothing doubles).
                log.critical("batch_failed", stage=name, error=repr(exc)[:500])
                os._exit(70)  # EX_SOFTWARE
            await acks.done(tickets)

        def start(tickets: list[Ticket], records: list[Record]) -> None:
            task = asyncio.ensure_future(work(tickets, records))
            running.add(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()

        try:
            async for events in stream.noack_take(settings.batch_max, within=settings.batch_within_s):
                tickets = acks.track(events)
                records = [
                    Record(
                        e.message.value,
                        e.message.key,
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        _headers(e.headers),
                    )
                    for e in events
                ]
                # Independent records are worked on one by one, so one slow record holds only
                # itself; otherwise the batch is one piece of work, one batch at a time.
                units = (
                    [([t], [r]) for t, r in zip(tickets, records, strict=True)]
                    if service.independent
                    else [(tickets, records)]
                )
                for unit in units:
                    await slots.acquire()
                    start(*unit)
        finally:
            await _drain(running, name, settings.shutdown_grace_s)
            health.set(name, False)
            await _stop(stage, settings.shutdown_grace_s)
            log.info("stage_stopped", stage=name)

    app.agent(topics[service.source], name=f"facestream.{name}")(agent)


async def _serve(name: str, build: Callable[[], Server], health: Health) -> None:
    """Run a service's server for as long as the worker runs (built here: its clients need the loop)."""
    try:
        server = build()
        await server.start()
    except Exception as exc:
        # As a stage that cannot start: a worker must not look alive without its server.
        log.critical("server_cannot_start", service=name, error=f"{type(exc).__name__}: {exc}"[:1000])
        os._exit(78)  # EX_CONFIG
    health.set(name, True)
    try:
        await asyncio.Event().wait()
    finally:
        health.set(name, False)
        await server.stop()


async def _process(stage: Stage, records: list[Record], settings: Settings) -> list[Outcome]:
    """The stage's outcomes for `records`. Those that failed for a reason that may pass (a server
    away, a timeout: `transient`) are processed again, `transient_retries` times with a doubling
    pause, before they are dead-lettered; ids are deterministic, so a second try duplicates nothing."""

    async def attempt(batch: list[Record]) -> list[Outcome]:
        try:
            return await stage.process(batch)
        except Exception as exc:  # a stage fault: dead-letter the batch, keep consuming
            return [Outcome(error=exc) for _ in batch]

    outcomes = await attempt(records)
    delay = settings.transient_backoff_s
    for _ in range(settings.transient_retries):
        again = [i for i, o in enumerate(outcomes) if getattr(o.error, "transient", False)]
        if not again:
            break
        for i in again:
            TRANSIENT_RETRIES.labels(stage.name, getattr(outcomes[i].error, "reason", "internal_error")).inc()
        await asyncio.sleep(delay)
        delay *= 2
        for i, outcome in zip(again, await attempt([records[i] for i in again]), strict=True):
            outcomes[i] = outcome
    return outcomes


async def _stop(stage: Stage, grace_s: float) -> None:
    """Stop the stage (close its clients, commit what its own consumers finished) even while the
    worker's shutdown cancels the agent again: an interrupted stop leaves clients unclosed and
    finished work uncommitted. Bounded by `grace_s`."""
    stopping = asyncio.ensure_future(stage.stop())
    deadline = asyncio.get_running_loop().time() + grace_s
    while not stopping.done():
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            stopping.cancel()
            log.error("stage_stop_timed_out", stage=stage.name, grace_s=grace_s)
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({stopping}, timeout=remaining)
    if not stopping.cancelled() and stopping.exception() is not None:
        log.error("stage_stop_failed", stage=stage.name, error=repr(stopping.exception())[:500])


async def _drain(running: set[asyncio.Task[None]], stage: str, grace_s: float) -> None:
    """At shutdown, give the work in flight `grace_s` to finish (even while the worker's shutdown
    cancels the agent again); cancel what is left. Cancelled work was never acknowledged, so
    the restart redelivers it; its ids are deterministic, so nothing is duplicated downstream."""
    deadline = asyncio.get_running_loop().time() + grace_s
    while running:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(set(running), timeout=remaining)
    if running:
        log.warning("work_unfinished_at_shutdown", stage=stage, records_or_batches=len(running))
        for task in list(running):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(set(running), timeout=1.0)
