"""The faust application: topics and one thin agent per service.

Each agent takes a batch from its stream, hands it to the service's stage (plain logic, no
Kafka), produces the outputs and dead letters, and waits until the broker has acknowledged all
of them. Only then does the batch count as processed, so offsets are committed after the outputs
exist (at-least-once; downstream ids are deterministic, so redelivery duplicates nothing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import faust

from facestream import contracts
from facestream.config import Settings
from facestream.io.kafka import MAX_REQUEST, TOPICS
from facestream.ops.logs import bind_event, get_logger
from facestream.ops.metrics import DEAD_LETTERS, EVENTS_CONSUMED, EVENTS_PRODUCED, STAGE_SECONDS
from facestream.ops.server import Health, OpsServer
from facestream.runtime.service import Service, own_topics
from facestream.runtime.stage import Outcome, Record, dead_letter

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
    groups = {app_id_for(settings, services, len(catalogue)): [settings.topic(s.source) for s in services]}
    for service in services:
        groups.update(service.groups(settings))
    return groups


def _own_topics(settings: Settings, services: Sequence[Service]) -> list[str]:
    """Short names of the topics the services own (stages may write to them: the notifier's jobs)."""
    prefix = f"{settings.topic_prefix}."
    return [spec.name.removeprefix(prefix) for spec in own_topics(settings, services)]


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
        datadir=str(settings.data_dir / "faust" / app_id),
    )
    topics = {
        name: app.topic(
            settings.topic(name), key_type=bytes, value_type=bytes, partitions=settings.partitions, internal=False
        )
        for name in (*TOPICS, "crops", *_own_topics(settings, services))
    }
    health = Health(["kafka", *(s.name for s in services)])
    for service in services:
        _register(app, service, topics, settings, executor, health)
    if settings.ops_port >= 0:
        ops = OpsServer(settings, groups, {s.name: s.source for s in services}, health)
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
    dlq = topics["dlq"]
    name = service.name

    async def agent(stream: Any) -> None:
        # The agent runs in its own task: every line it (and tasks it starts) logs names the stage.
        bind_event(stage=name)
        stage = service.stage(settings, executor)
        await stage.start()
        health.set(name, True)
        log.info("stage_started", stage=name)
        try:
            async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
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
                started = time.perf_counter()
                try:
                    outcomes = await stage.process(records)
                except Exception as exc:  # a stage fault: dead-letter the batch, keep consuming
                    outcomes = [Outcome(error=exc) for _ in records]
                EVENTS_CONSUMED.labels(name).inc(len(records))
                per_event = (time.perf_counter() - started) / len(records)
                for _ in records:
                    STAGE_SECONDS.labels(name).observe(per_event)
                pending = []
                for record, outcome in zip(records, outcomes, strict=True):
                    headers = {"trace-id": record.headers["trace-id"]} if "trace-id" in record.headers else {}
                    if outcome.error is not None:
                        letter = dead_letter(name, record, outcome.error)
                        DEAD_LETTERS.labels(name, letter["reason"]).inc()
                        log.warning(
                            "dead_letter",
                            stage=name,
                            reason=letter["reason"],
                            image_id=letter["image_id"],
                            detail=letter["detail"][:300],
                        )
                        pending.append(await dlq.send(key=record.key, value=contracts.dumps(letter), headers=headers))
                    for out in outcome.outputs:
                        EVENTS_PRODUCED.labels(name, out.topic).inc()
                        trace = out.value.get("trace_id")
                        out_headers = {"trace-id": trace.encode()} if trace else headers
                        pending.append(
                            await topics[out.topic].send(
                                key=out.key.encode(), value=contracts.dumps(out.value), headers=out_headers
                            )
                        )
                # The batch is acked (and its offsets become committable) only after this returns.
                await asyncio.gather(*pending)
        finally:
            health.set(name, False)
            await stage.stop()
            log.info("stage_stopped", stage=name)

    app.agent(topics[service.source], name=f"facestream.{name}")(agent)
