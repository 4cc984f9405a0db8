"""A notifier (fan-out + delivery engine) on the real local Kafka, with scripted webhook
subscribers: real HTTP servers on loopback that answer as told and verify every signature."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from facestream.config import Settings
from facestream.contracts.timeutil import now_iso
from facestream.io.kafka import delete_topics, producer
from facestream.runtime.stage import Record
from facestream.services.main import ensure_topics
from facestream.services.notifier.admin import dead_letters, delivery_log
from facestream.services.notifier.stage import NotifierStage
from facestream.services.notifier.subscriptions import Subscription, new_secret
from facestream.webhooks import InvalidWebhook, verify_webhook
from tests.helpers import match_result

LOOPBACK = ("127.0.0.1",)
# An answer: an HTTP status, (status, headers), or ("hang", seconds) before a 204.
Answer = int | tuple[int, dict[str, str]] | tuple[str, float]


@dataclass
class Arrival:
    at: float
    webhook_id: str
    answered: int
    body: bytes
    headers: dict[str, str]


@dataclass
class Subscriber:
    """Answers the first requests from `script`, then `then`; records every request."""

    script: list[Answer] = field(default_factory=list)
    then: Answer = 204
    secrets: list[str] = field(default_factory=lambda: [new_secret()])
    port: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    unverified: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def secret(self) -> str:
        return self.secrets[0]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        for secret in self.secrets:
            try:
                verify_webhook(secret, body, request.headers)
            except InvalidWebhook:
                self.unverified += 1
        answer = self.script.pop(0) if self.script else self.then
        status, extra = 204, {}
        if isinstance(answer, int):
            status = answer
        elif answer[0] == "hang":
            await asyncio.sleep(float(answer[1]))
        else:
            status, extra = int(answer[0]), dict(answer[1])  # type: ignore[arg-type]
        self.arrivals.append(Arrival(time.monotonic(), headers["webhook-id"], status, body, headers))
        return web.Response(status=status, headers=extra)

    async def start(self) -> Subscriber:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def delivered(self) -> dict[str, list[dict[str, Any]]]:
        """Payloads answered with 2xx, by webhook id."""
        out: dict[str, list[dict[str, Any]]] = {}
        for a in self.arrivals:
            if 200 <= a.answered < 300:
                out.setdefault(a.webhook_id, []).append(orjson.loads(a.body))
        return out

    def attempts(self, webhook_id: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.webhook_id == webhook_id]


def match(n: int, watchlist: str = "missing", score: float = 0.7, occurred_at: str | None = None) -> dict[str, Any]:
    """A match for one candidate, made now (unless `occurred_at` says otherwise)."""
    image_id = f"img-{uuid.uuid4().hex[:8]}-{n}"
    candidates = [{"subject_id": f"s{n}", "watchlist": watchlist, "score": score, "rank": 1}]
    return match_result(image_id, candidates, case_ref=f"CASE-{n}", occurred_at=occurred_at or now_iso())


class Rig:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stage = NotifierStage(settings)
        self.producer = producer(settings)
        self.offset = 0

    @property
    def store(self) -> Any:
        return self.stage.store

    async def add(self, name: str, subscriber: Subscriber, **kwargs: Any) -> Subscription:
        sub: Subscription = await self.store.add(
            Subscription.new(
                name, subscriber.url, subscriber.secret, **{"all_watchlists": not kwargs.get("watchlists"), **kwargs}
            )
        )
        return sub

    async def publish(self, *matches: dict[str, Any]) -> None:
        """Fan out as the notifier agent does, and produce the jobs."""
        records = []
        for m in matches:
            self.offset += 1
            records.append(Record(orjson.dumps(m), m["image_id"].encode(), "matches", 0, self.offset))
        for outcome in await self.stage.process(records):
            assert outcome.error is None, outcome.error
            for out in outcome.outputs:
                await self.producer.send_and_wait(
                    self.settings.topic(out.topic), orjson.dumps(out.value), key=out.key.encode()
                )

    async def restart(self, between: Callable[[], Any] | None = None) -> None:
        """Stop the notifier (store and engine), optionally do something, start a new one."""
        await self.stage.stop()
        if between is not None:
            result = between()
            if asyncio.iscoroutine(result):
                await result
        self.stage = NotifierStage(self.settings)
        await self.stage.start()

    async def log(self, subscription: str | None = None) -> list[dict[str, Any]]:
        return await delivery_log(self.settings, subscription)

    async def dead(self, subscription: str) -> list[dict[str, Any]]:
        return await dead_letters(self.settings, subscription)

    async def wait_for(self, done: Callable[[], Any], limit_s: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + limit_s
        while True:
            result = done()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log: {await self.log()}")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def notifier(tmp_path: Path, kafka: str, **overrides: Any) -> AsyncIterator[Rig]:
    prefix = f"d{uuid.uuid4().hex[:10]}"
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka,
        "topic_prefix": prefix,
        "app_id": prefix,
        "data_dir": tmp_path / "state",
        "webhook_allow_private": LOOPBACK,
        "webhook_timeout_s": 1.0,
        "webhook_schedule_s": (0.0, 0.3, 0.6, 1.2),
        "session_timeout_s": 6.0,
        "crops_port": 0,
        **overrides,
    }
    settings = Settings(**values)
    await ensure_topics(settings)
    rig = Rig(settings)
    await rig.producer.start()
    await rig.stage.start()
    try:
        yield rig
    finally:
        await rig.stage.stop()
        await rig.producer.stop()
        await delete_topics(settings)
