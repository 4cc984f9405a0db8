"""A webhook receiver on loopback that verifies every delivery, as a subscriber would run one.
Used by the demo and the tests; also a worked example of `verify_webhook`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from facestream.io.http import serve
from facestream.webhooks import InvalidWebhook, verify_webhook


@dataclass
class Delivery:
    webhook_id: str
    event: dict[str, Any]


@dataclass
class WebhookReceiver:
    secret: str
    host: str = "127.0.0.1"
    port: int = 0
    on_delivery: Callable[[Delivery], None] | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    requests: int = 0
    rejected: int = 0
    duplicates: int = 0
    _seen: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/webhooks"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        try:
            event = verify_webhook(self.secret, body, request.headers)
        except InvalidWebhook:
            self.rejected += 1
            return web.Response(status=401)
        webhook_id = request.headers["webhook-id"]
        if webhook_id in self._seen:  # de-duplicate on webhook-id, as the spec advises
            self.duplicates += 1
            return web.Response(status=204)
        self._seen.add(webhook_id)
        delivery = Delivery(webhook_id, event)
        self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks", self._handle)
        self._runner, self.port = await serve(app, self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
