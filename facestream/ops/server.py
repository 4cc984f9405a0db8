"""Each worker's operations endpoint (loopback by default):

- `GET /metrics`: Prometheus metrics of every service in the worker (one registry per process,
  so all four services together in one process are aggregated).
- `GET /healthz`: liveness (the event loop answers).
- `GET /readyz`: readiness: 200 when Kafka answers and every service has its dependencies
  (the detector its model, the embedder its model or Triton, the matcher its gallery, the
  notifier its subscriptions); 503 with the failing components otherwise.
- `GET /api/status`: JSON for the dashboard: per-stage counts, processing-time percentiles
  (estimated from the histogram as Prometheus does), dead letters, consumer lag per topic and
  partition, and the webhook retries scheduled in the tiers (not lag).
- `GET /`: the live dashboard (plain HTML and JavaScript over `/api/status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from facestream.config import Settings
from facestream.io.http import serve
from facestream.ops.lag import Lag, consumer_lag
from facestream.ops.logs import get_logger
from facestream.ops.metrics import (
    COMPONENT_READY,
    CONSUMER_LAG,
    CONSUMER_LAG_SECONDS,
    NEXT_RETRY_DUE,
    OBJECTIVE_SECONDS,
    SCHEDULED_RETRIES,
    WORKER_READY,
    histogram_quantile,
)

log = get_logger(__name__)
DASHBOARD = files("facestream.ops") / "static" / "dashboard.html"


class Health:
    """Readiness of the components a worker depends on."""

    def __init__(self, expected: list[str]) -> None:
        self._set: dict[str, bool] = dict.fromkeys(expected, False)
        self._checks: dict[str, Callable[[], bool]] = {}

    def set(self, component: str, ok: bool) -> None:
        self._set[component] = ok

    def check(self, component: str, probe: Callable[[], bool]) -> None:
        """A component whose readiness is asked of `probe` each time (the model processes)."""
        self._checks[component] = probe

    @property
    def components(self) -> dict[str, bool]:
        return {**self._set, **{name: probe() for name, probe in self._checks.items()}}

    @property
    def ready(self) -> bool:
        components = self.components
        return bool(components) and all(components.values())


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _stage_total(counter: str, stage: str) -> float:
    """A counter's total for one stage, summed over its other labels (topic, reason)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == counter
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("stage") == stage
    )


def counts(counter: str, outer: str, inner: str) -> dict[str, dict[str, float]]:
    """A counter of this worker by two of its labels (`outer`, then `inner`)."""
    out: dict[str, dict[str, float]] = {}
    for family in REGISTRY.collect():
        if family.name == counter:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out.setdefault(sample.labels[outer], {})[sample.labels[inner]] = sample.value
    return out


def webhook_status() -> dict[str, dict[str, float]]:
    """This worker's webhook delivery outcomes, by subscription and outcome."""
    return counts("facestream_webhook_outcomes", "subscription", "outcome")


def buckets(name: str, labels: Mapping[str, str] | None = None) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets (upper bound, count) in this worker, sorted."""
    return sorted(
        (float(sample.labels["le"]), sample.value)
        for family in REGISTRY.collect()
        if family.name == name
        for sample in family.samples
        if sample.name.endswith("_bucket") and all(sample.labels.get(k) == v for k, v in (labels or {}).items())
    )


def percentile(stage: str, q: float) -> float:
    """The q-quantile (ms) of a stage's processing times since the worker started, estimated
    from its histogram as Prometheus's `histogram_quantile` does; 0 before the first event."""
    value = histogram_quantile(q, buckets("facestream_stage_seconds", {"stage": stage}))
    return 0.0 if math.isnan(value) else round(1000 * value, 2)


def stage_status(sources: Mapping[str, str], lag: list[Lag] | None = None) -> dict[str, dict[str, float]]:
    """Per stage (name: the topic it consumes): counts, times and lag on its source topic."""
    out = {}
    for stage, source in sources.items():
        count = _sample("facestream_stage_seconds_count", {"stage": stage})
        total = _sample("facestream_stage_seconds_sum", {"stage": stage})
        out[stage] = {
            "consumed": _sample("facestream_events_consumed_total", {"stage": stage}),
            "produced": _stage_total("facestream_events_produced", stage),
            "dead_letters": _stage_total("facestream_dead_letters", stage),
            "mean_ms": round(1000 * total / count, 2) if count else 0.0,
            "p50_ms": percentile(stage, 0.5),
            "p99_ms": percentile(stage, 0.99),
            "lag": sum(r.behind for r in lag or () if r.topic.endswith(f".{source}")),
        }
    return out


class OpsServer:
    def __init__(
        self,
        settings: Settings,
        groups: Mapping[str, Sequence[str]],
        stages: Mapping[str, str],
        health: Health,
        scheduled: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        # The first group is the agents'; others are the services' own (the delivery engine's).
        self.groups = dict(groups)
        self.group = next(iter(self.groups))
        self.stages = dict(stages)
        self.health = health
        self.scheduled = list(scheduled)
        self.lag: list[Lag] = []
        self.lag_at = 0.0
        self._runner: web.AppRunner | None = None
        self.port = settings.ops_port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._dashboard)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/status", self._status)
        OBJECTIVE_SECONDS.labels("end_to_end").set(self.settings.end_to_end_objective_s)
        OBJECTIVE_SECONDS.labels("erasure").set(self.settings.erasure_objective_s)
        self._readiness()
        self._runner, self.port = await serve(app, self.settings.ops_host, self.settings.ops_port)
        log.info("ops_listening", host=self.settings.ops_host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def refresh(self) -> None:
        """Read this worker's group lag from the broker into the gauges."""
        try:
            rows = await consumer_lag(self.settings, self.groups, self.scheduled)
        except Exception as exc:
            self.health.set("kafka", False)
            log.warning("lag_unavailable", error=str(exc)[:200])
            return
        self.health.set("kafka", True)
        now = time.time()
        tiers: dict[tuple[str, str], list[Lag]] = {(r.group, r.topic): [] for r in rows if r.topic in self.scheduled}
        for row in rows:
            CONSUMER_LAG.labels(row.group, row.topic, str(row.partition)).set(row.behind)
            CONSUMER_LAG_SECONDS.labels(row.group, row.topic, str(row.partition)).set(row.age(now))
            if row.scheduled:
                tiers[(row.group, row.topic)].append(row)
        for (group, topic), waiting in tiers.items():
            SCHEDULED_RETRIES.labels(group, topic).set(sum(r.waiting for r in waiting))
            NEXT_RETRY_DUE.labels(group, topic).set(min((r.due_at or 0.0 for r in waiting), default=0.0))
        self.lag, self.lag_at = rows, now

    async def run(self) -> None:
        try:
            await self.start()
        except OSError as exc:  # the pipeline matters more than its dashboard: keep processing
            log.error("ops_unavailable", host=self.settings.ops_host, port=self.settings.ops_port, error=str(exc))
            return
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(self.settings.lag_interval_s)
        finally:
            with contextlib.suppress(Exception):
                await self.stop()

    async def _dashboard(self, request: web.Request) -> web.Response:
        return web.Response(body=DASHBOARD.read_bytes(), content_type="text/html", charset="utf-8")

    def _readiness(self) -> None:
        components = self.health.components
        for name, ok in components.items():
            COMPONENT_READY.labels(name).set(1 if ok else 0)
        WORKER_READY.set(1 if self.health.ready else 0)

    async def _metrics(self, request: web.Request) -> web.Response:
        self._readiness()  # as /readyz would answer now
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        body = {"ready": self.health.ready, "components": self.health.components}
        return web.json_response(body, status=200 if self.health.ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "group": self.group,
            "ready": self.health.ready,
            "components": self.health.components,
            "stages": stage_status(self.stages, self.lag),
            "lag": [
                {
                    "group": r.group,
                    "topic": r.topic,
                    "partition": r.partition,
                    "committed": r.committed,
                    "end": r.end,
                    "lag": r.behind,
                    "scheduled": r.waiting,
                }
                for r in self.lag
            ],
            "lag_total": sum(r.behind for r in self.lag),
            "webhooks": webhook_status(),
            "dead_letters": counts("facestream_dead_letters", "stage", "reason"),
            # The lag of the services' own groups (the notifier's delivery engine: jobs not yet
            # taken), and apart from it the retries waiting in the tiers for their due time.
            "deliveries_pending": sum(r.behind for r in self.lag if r.group != self.group),
            "retries_scheduled": sum(r.waiting for r in self.lag),
            "next_retry_due": min((r.due_at for r in self.lag if r.scheduled and r.due_at), default=None),
            "lag_at": self.lag_at,
            # Submission to webhook (a notifier's): the page estimates percentiles over its last
            # 30 s from the growth of each bucket, as `histogram_quantile(rate(...))` does.
            "end_to_end_buckets": [
                ["+Inf" if math.isinf(bound) else bound, count]
                for bound, count in buckets("facestream_end_to_end_seconds")
            ],
        }
        return web.json_response(body)
