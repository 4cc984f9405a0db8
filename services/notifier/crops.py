"""Probe face crops for human review, behind signed, expiring links.

The detector publishes the aligned probe face of every search to `crops` (never enrolment
photos). A notifier worker serves one at ``GET /v1/crops/<match event id>?subscription=…&image=…&
at=…&expires=…&signature=…``, reading it back from the topic when the link is followed
(`facestream.crops`): no worker keeps probe faces on its disk. A link is made for one subscription
and one match, names where the crop lies (the image id, the partition's key, and when the image was
submitted), expires with the match (`expires_at`), and stops working as soon as its subscription is
disabled or removed; every fetch is audited. The signature is an HMAC over all of those fields with a
key derived from `subscriptions_key`, so no further secret needs distributing and nobody can point
the server at another place in the topic.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web

from facestream import audit
from facestream.config import Settings
from facestream.crops import CropFinder
from facestream.io.http import serve
from facestream.ops.logs import get_logger
from facestream.services.notifier.subscriptions import SubscriptionStore, subscriptions_key

log = get_logger(__name__)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _link_key(settings: Settings) -> bytes:
    # Derived, not stored: the same configuration secret that protects the signing secrets.
    return hmac.new(subscriptions_key(settings).encode(), b"facestream crop links v1", hashlib.sha256).digest()


SIGNED = ("subscription", "expires", "image", "at")  # with the event id, what a link's signature covers


def _signature(key: bytes, event_id: str, fields: Mapping[str, str]) -> str:
    signed = "\n".join([event_id, *(fields.get(name, "") for name in SIGNED)])
    mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


class CropLinks:
    """Makes and checks crop links for one configuration."""

    def __init__(self, settings: Settings, base_url: str) -> None:
        self.key = _link_key(settings)
        self.base_url = base_url.rstrip("/")

    def link(self, event_id: str, subscription: str, expires: float, image_id: str, submitted: float) -> str:
        fields = {
            "subscription": subscription,
            "expires": str(int(expires)),
            "image": image_id,
            "at": str(int(submitted)),
        }
        query = urlencode({**fields, "signature": _signature(self.key, event_id, fields)})
        return f"{self.base_url}/v1/crops/{event_id}?{query}"

    def check(self, event_id: str, query: Mapping[str, str], now: float) -> str | None:
        """None if the link is valid now; otherwise why not ("forbidden" or "expired")."""
        try:
            expires, _ = int(query.get("expires", "")), int(query.get("at", ""))
        except ValueError:
            return "forbidden"
        if not hmac.compare_digest(query.get("signature", ""), _signature(self.key, event_id, query)):
            return "forbidden"
        return "expired" if now >= expires else None


class CropServer:
    """Serves probe crops, read from `crops` when asked, to holders of a valid link."""

    def __init__(self, settings: Settings, store: SubscriptionStore) -> None:
        self.settings = settings
        self.store = store
        self.port = settings.crops_port
        self.links: CropLinks | None = None
        self.finder = CropFinder(settings)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return self.settings.crops_public_url or f"http://{self.settings.crops_host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/crops/{event_id}", self._get)
        self._runner, self.port = await serve(app, self.settings.crops_host, self.settings.crops_port)
        self.links = CropLinks(self.settings, self.base_url)
        log.info("crops_listening", host=self.settings.crops_host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.finder.close()

    async def _get(self, request: web.Request) -> web.Response:
        assert self.links is not None
        event_id = request.match_info["event_id"]
        q = request.query
        subscription = q.get("subscription", "")
        problem = self.links.check(event_id, q, time.time())
        sub = self.store.get(subscription)
        if problem is None and (sub is None or not sub.active):
            problem = "forbidden"
        if problem is not None or not _UUID.match(event_id):
            log.warning("crop_refused", subscription=subscription[:64], event_id=event_id[:64], reason=problem)
            return web.Response(status=410 if problem == "expired" else 403, text=problem or "forbidden")
        data = await self.finder.find(q.get("image", ""), event_id, int(q["at"]))
        if data is None:
            return web.Response(status=404, text="no crop for this match (not yet written, or no longer kept)")
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
            body=data,
            content_type="image/jpeg",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )
