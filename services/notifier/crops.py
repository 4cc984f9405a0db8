"""Probe face crops for human review, behind signed, expiring links.

The detector publishes the aligned probe face of every search to `crops` (never enrolment
photos). Each notifier worker keeps the crops that may still be asked for on local disk and
serves them at ``GET /v1/crops/<match event id>?subscription=…&expires=…&signature=…``. A link is
made for one subscription and one match, expires with the match (`expires_at`), and stops
working as soon as its subscription is disabled or removed; every fetch is written to the log.
The signature is an HMAC over those fields with a key derived from `subscriptions_key`, so no
further secret needs distributing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import re
import time
from pathlib import Path
from urllib.parse import urlencode

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from facestream import audit
from facestream.config import Settings
from facestream.contracts.timeutil import parse_iso
from facestream.io.http import serve
from facestream.io.kafka import connection, follow, topic_partitions
from facestream.ops.logs import get_logger
from facestream.services.notifier.subscriptions import SubscriptionStore, subscriptions_key

log = get_logger(__name__)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _link_key(settings: Settings) -> bytes:
    # Derived, not stored: the same configuration secret that protects the signing secrets.
    return hmac.new(subscriptions_key(settings).encode(), b"facestream crop links v1", hashlib.sha256).digest()


def _signature(key: bytes, event_id: str, subscription: str, expires: int) -> str:
    mac = hmac.new(key, f"{event_id}\n{subscription}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


class CropLinks:
    """Makes and checks crop links for one configuration."""

    def __init__(self, settings: Settings, base_url: str) -> None:
        self.key = _link_key(settings)
        self.base_url = base_url.rstrip("/")

    def link(self, event_id: str, subscription: str, expires: float) -> str:
        expires_i = int(expires)
        query = urlencode(
            {
                "subscription": subscription,
                "expires": expires_i,
                "signature": _signature(self.key, event_id, subscription, expires_i),
            }
        )
        return f"{self.base_url}/v1/crops/{event_id}?{query}"

    def check(self, event_id: str, subscription: str, expires: str, signature: str, now: float) -> str | None:
        """None if the link is valid now; otherwise why not ("forbidden" or "expired")."""
        try:
            expires_i = int(expires)
        except ValueError:
            return "forbidden"
        if not hmac.compare_digest(signature, _signature(self.key, event_id, subscription, expires_i)):
            return "forbidden"
        return "expired" if now >= expires_i else None


class CropServer:
    """Follows `crops` into `data_dir/crops/` and serves them to holders of a valid link."""

    def __init__(self, settings: Settings, store: SubscriptionStore, sweep_every_s: float = 60.0) -> None:
        self.settings = settings
        self.store = store
        self.dir = Path(settings.data_dir) / "crops"
        self.sweep_every_s = sweep_every_s
        self.port = settings.crops_port
        self.links: CropLinks | None = None
        self._runner: web.AppRunner | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def base_url(self) -> str:
        return self.settings.crops_public_url or f"http://{self.settings.crops_host}:{self.port}"

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        app = web.Application()
        app.router.add_get("/v1/crops/{event_id}", self._get)
        self._runner, self.port = await serve(app, self.settings.crops_host, self.settings.crops_port)
        self.links = CropLinks(self.settings, self.base_url)
        topic = self.settings.topic("crops")
        self._consumer = AIOKafkaConsumer(**connection(self.settings), enable_auto_commit=False)
        await self._consumer.start()
        parts = [TopicPartition(topic, p) for p in (await topic_partitions(self.settings, [topic])).get(topic, [])]
        self._consumer.assign(parts)
        if parts:
            await self._consumer.seek_to_beginning(*parts)
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._sweep_every())]
        log.info("crops_listening", host=self.settings.crops_host, port=self.port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _follow(self) -> None:
        assert self._consumer is not None
        # Every search's crop is written to a file: in a thread, not on the loop all stages share.
        await follow(self._consumer, lambda r: self._keep(r.value), in_thread=True)

    def _keep(self, raw: bytes | None) -> None:
        try:
            crop = orjson.loads(raw or b"")
            event_id = crop["event_id"]
            if not _UUID.match(event_id):
                raise ValueError("event id")
            data = base64.b64decode(crop["data_b64"], validate=True)
            occurred = parse_iso(crop["occurred_at"]).timestamp()
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("crop_unreadable", error=str(exc)[:200])
            return
        if occurred < time.time() - self.settings.webhook_event_ttl_s:
            return  # past its time; the topic keeps segments a little longer than asked
        path = self.dir / f"{event_id}.jpg"
        if not path.exists():
            path.write_bytes(data)
            os.utime(path, (occurred, occurred))  # the sweeper ages crops from their match

    def sweep(self, now: float | None = None) -> int:
        """Delete crops older than a match may be delivered; returns how many."""
        cutoff = (now or time.time()) - self.settings.webhook_event_ttl_s
        removed = 0
        for path in self.dir.glob("*.jpg"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    async def _sweep_every(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            removed = self.sweep()
            if removed:
                log.info("crops_swept", removed=removed)

    async def _get(self, request: web.Request) -> web.Response:
        assert self.links is not None
        event_id = request.match_info["event_id"]
        q = request.query
        subscription = q.get("subscription", "")
        problem = self.links.check(event_id, subscription, q.get("expires", ""), q.get("signature", ""), time.time())
        sub = self.store.get(subscription)
        if problem is None and (sub is None or not sub.active):
            problem = "forbidden"
        if problem is not None or not _UUID.match(event_id):
            log.warning("crop_refused", subscription=subscription[:64], event_id=event_id[:64], reason=problem)
            return web.Response(status=410 if problem == "expired" else 403, text=problem or "forbidden")
        path = self.dir / f"{event_id}.jpg"
        if not path.exists():
            return web.Response(status=404, text="no crop for this match (not yet received, or erased)")
        entry = audit.entry(
            "crop_fetch",
            f"subscription:{subscription}",
            "notifier",
            f"{event_id}/{subscription}/{time.time()}",
            details={"peer": request.remote},
            match_event_id=event_id,
            subscription=subscription,
        )
        try:  # served only once audited
            await audit.send(self.settings, self.store.producer, entry)
        except Exception as exc:
            log.error("crop_fetch_unaudited", event_id=event_id, error=f"{type(exc).__name__}: {exc}"[:300])
            return web.Response(status=503, text="cannot audit this fetch now; try again")
        log.info("crop_served", subscription=subscription, event_id=event_id)
        return web.Response(
            body=path.read_bytes(),
            content_type="image/jpeg",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )
