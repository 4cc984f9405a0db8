"""Each worker's operations endpoint (loopback by default):

- `GET /metrics`: Prometheus metrics of every service in the worker (one registry per process,
  so all four services together in one process are aggregated).
- `GET /healthz`: liveness (the event loop answers).
- `GET /readyz`: readiness: 200 when Kafka answers and every service has its dependencies
  (the detector its model, the embedder its model or Triton, the matcher its gallery, the
  notifier its subscriptions); 503 with the failing components otherwise.
- `GET /api/status`: JSON for `facestream status` and the dashboard: per-stage counts, mean
  processing time, dead letters, and consumer lag per topic and partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, cast

from aiohttp import web
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from facestream.config import Settings
from facestream.lag import Lag, consumer_lag
from facestream.logs import get_logger
from facestream.metrics import CONSUMER_LAG

log = get_logger(__name__)


class Health:
    """Readiness of the components a worker depends on."""

    def __init__(self, expected: list[str]) -> None:
        self.components: dict[str, bool] = dict.fromkeys(expected, False)

    def set(self, component: str, ok: bool) -> None:
        self.components[component] = ok

    @property
    def ready(self) -> bool:
        return bool(self.components) and all(self.components.values())


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stage_status(stages: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for stage in stages:
        count = _sample("facestream_stage_seconds_count", {"stage": stage})
        total = _sample("facestream_stage_seconds_sum", {"stage": stage})
        dead = sum(
            s.value
            for m in REGISTRY.collect()
            if m.name == "facestream_dead_letters"
            for s in m.samples
            if s.name.endswith("_total") and s.labels.get("stage") == stage
        )
        produced = sum(
            s.value
            for m in REGISTRY.collect()
            if m.name == "facestream_events_produced"
            for s in m.samples
            if s.name.endswith("_total") and s.labels.get("stage") == stage
        )
        out[stage] = {
            "consumed": _sample("facestream_events_consumed_total", {"stage": stage}),
            "produced": produced,
            "dead_letters": dead,
            "mean_ms": round(1000 * total / count, 2) if count else 0.0,
        }
    return out


class OpsServer:
    def __init__(self, settings: Settings, group: str, stages: list[str], health: Health) -> None:
        self.settings = settings
        self.group = group
        self.stages = stages
        self.health = health
        self.lag: list[Lag] = []
        self.lag_at = 0.0
        self._runner: web.AppRunner | None = None
        self.port = settings.ops_port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/status", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.ops_host, self.settings.ops_port)
        await site.start()
        server = cast(asyncio.Server | None, site._server)
        if server is not None and server.sockets:  # port 0: the one the OS chose
            self.port = int(server.sockets[0].getsockname()[1])
        log.info("ops_listening", host=self.settings.ops_host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def refresh(self) -> None:
        """Read this worker's group lag from the broker into the gauges."""
        try:
            rows = await consumer_lag(self.settings, [self.group])
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
            "stages": stage_status(self.stages),
            "lag": [
                {"topic": r.topic, "partition": r.partition, "committed": r.committed, "end": r.end, "lag": r.lag}
                for r in self.lag
            ],
            "lag_total": sum(r.lag for r in self.lag),
            "lag_at": self.lag_at,
        }
        return web.json_response(body)
