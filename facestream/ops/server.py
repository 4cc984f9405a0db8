"""Each worker's operations endpoint (loopback by default):

- `GET /metrics`: Prometheus metrics of every service in the worker (one registry per process,
  so all four services together in one process are aggregated).
- `GET /healthz`: liveness (the event loop answers).
- `GET /readyz`: readiness: 200 when Kafka answers and every service has its dependencies
  (the detector its model, the embedder its model or Triton, the matcher its gallery, the
  notifier its subscriptions); 503 with the failing components otherwise.
- `GET /api/status`: JSON for the dashboard: per-stage counts, processing-time percentiles,
  dead letters, and consumer lag per topic and partition.
- `GET /`: the live dashboard (plain HTML and JavaScript over `/api/status`).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from facestream.ops.metrics import CONSUMER_LAG

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


def webhook_status() -> dict[str, dict[str, float]]:
    """This worker's webhook delivery outcomes, by subscription and outcome."""
    out: dict[str, dict[str, float]] = {}
    for family in REGISTRY.collect():
        if family.name == "facestream_webhook_outcomes":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out.setdefault(sample.labels["subscription"], {})[sample.labels["outcome"]] = sample.value
    return out


def percentile(stage: str, q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding the q-quantile of a stage's times."""
    buckets = []
    for family in REGISTRY.collect():
        if family.name == "facestream_stage_seconds":
            buckets = sorted(
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name.endswith("_bucket") and s.labels.get("stage") == stage
            )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return 0.0
    for bound, count in buckets:
        if count >= q * total:
            return round(1000 * bound, 1) if bound != float("inf") else round(1000 * buckets[-2][0], 1)
    return 0.0


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
            "lag": sum(r.lag for r in lag or () if r.topic.endswith(f".{source}")),
        }
    return out


class OpsServer:
    def __init__(
        self, settings: Settings, groups: Mapping[str, Sequence[str]], stages: Mapping[str, str], health: Health
    ) -> None:
        self.settings = settings
        # The first group is the agents'; others are the services' own (the delivery engine's).
        self.groups = dict(groups)
        self.group = next(iter(self.groups))
        self.stages = dict(stages)
        self.health = health
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
        self._runner, self.port = await serve(app, self.settings.ops_host, self.settings.ops_port)
        log.info("ops_listening", host=self.settings.ops_host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def refresh(self) -> None:
        """Read this worker's group lag from the broker into the gauges."""
        try:
            rows = await consumer_lag(self.settings, self.groups)
        except Exception as exc:
            self.health.set("kafka", False)
            log.warning("lag_unavailable", error=str(exc)[:200])
            return
        self.health.set("kafka", True)
        for row in rows:
            CONSUMER_LAG.labels(row.group, row.topic, str(row.partition)).set(row.lag)
        self.lag, self.lag_at = rows, time.time()

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

    async def _metrics(self, request: web.Request) -> web.Response:
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
                {"topic": r.topic, "partition": r.partition, "committed": r.committed, "end": r.end, "lag": r.lag}
                for r in self.lag
            ],
            "lag_total": sum(r.lag for r in self.lag),
            "webhooks": webhook_status(),
            # The lag of the services' own groups: today the notifier's delivery engine, whose lag
            # is the jobs in the deliveries topic and the retry tiers not yet finished.
            "deliveries_pending": sum(r.lag for r in self.lag if r.group != self.group),
            "lag_at": self.lag_at,
        }
        return web.json_response(body)
