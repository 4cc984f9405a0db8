"""Real HTTP servers on loopback for the fetch and webhook tests."""

from __future__ import annotations

import asyncio
import base64
import datetime
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

# The digest test events claim for their image (any valid sha256 will do).
SHA = "5" * 64

# A retention term inside the allowed maximum (3 years), whatever day the suite runs.
RETAIN = (datetime.date.today() + datetime.timedelta(days=365)).isoformat()


def face_detected(image_id: str, crop: Any, intent: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid face.detected event carrying `crop` (112x112 BGR), as the detector emits it."""
    from facestream.contracts import ids

    return {
        "schema_version": 1,
        "event_type": "face.detected",
        "event_id": ids.event_id("face", image_id, 0, SHA),
        "image_id": image_id,
        "image_sha256": SHA,
        "trace_id": "t1",
        "face_index": 0,
        "face_count": 1,
        "bbox": [1, 2, 3, 4],
        "landmarks": [[1, 1]] * 5,
        "det_score": 0.9,
        "quality": {"face_px": 100, "sharpness": 50},
        "aligned": {
            "format": "bgr8",
            "width": 112,
            "height": 112,
            "data_b64": base64.b64encode(crop.tobytes()).decode(),
        },
        "intent": intent or {"kind": "search", "purpose": "test", "case_ref": "C", "requester": "r"},
        "source": "test",
        "captured_at": "2026-01-01T00:00:00Z",
        "occurred_at": "2026-01-01T00:00:01Z",
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    """An aiohttp server on 127.0.0.1 with one route per path; records every request."""

    routes: dict[str, Handler]
    port: int = 0
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Server:
        app = web.Application()
        for path, handler in self.routes.items():
            app.router.add_route("*", path, self._recording(handler))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def _recording(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.path, dict(request.headers), await request.read()))
            return await handler(request)

        return wrapped

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def respond(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


def hang(seconds: float) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=204)

    return handler


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` but holds almost no data: a decompression bomb's
    header, which a safe decoder must refuse before allocating pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def match_result(
    image_id: str,
    candidates: list[dict[str, Any]],
    *,
    status: str = "match",
    case_ref: str = "CASE-5",
    occurred_at: str = "2026-01-01T00:00:01Z",
) -> dict[str, Any]:
    """A valid match.result event, as the matcher emits it."""
    from facestream.contracts import ids

    return {
        "schema_version": 1,
        "event_type": "match.result",
        "event_id": ids.event_id("match", image_id, 0, SHA),
        "image_id": image_id,
        "image_sha256": SHA,
        "trace_id": f"trace-{image_id}",
        "status": status,
        "face_index": 0,
        "face_count": 1,
        "candidates": candidates,
        "threshold": 0.44,
        "operating_point": {"false_positive_identification_rate": 0.01, "calibration": "devset"},
        "model": {"name": "sface", "version": "2021dec"},
        "gallery": {"name": "faces", "size": 2},
        "intent": {"kind": "search", "purpose": "find", "case_ref": case_ref, "requester": "r"},
        "review": "candidate: investigative lead, requires human confirmation",
        "source": "test",
        "captured_at": "2026-01-01T00:00:00Z",
        "occurred_at": occurred_at,
    }


def enrolment(
    image_id: str, path: Path, settings: Any, watchlist: str = "test-list", retain_until: str = RETAIN
) -> dict[str, Any]:
    """An image.submitted enrolling the sample photo at `path` (its folder names the subject)."""
    from facestream import client

    intent = client.enroll_intent(
        path.parent.name,
        watchlist,
        lawful_basis="explicit_consent",
        consent_ref=f"consent/{path.parent.name}",
        retain_until=retain_until,
        source_attestation="sample photo (MIT), see samples/SOURCES.md",
        enrolled_by="test-suite",
    )
    return client.submission(image_id, client.image_ref(path, settings), intent, "tests")


async def new_token(settings: Any, name: str, roles: list[str]) -> tuple[Any, str]:
    """An API token, made as `facestream tokens create` makes one; its text is the second item."""
    from facestream.services.api.tokens import TokenStore

    store = TokenStore(settings, follow=False)
    await store.start()
    try:
        return await store.create(name, roles, 3600, "test")
    finally:
        await store.stop()


async def api_knows(base_url: str, *tokens: str) -> bool:
    """Whether the API at `base_url` answers and accepts every one of `tokens` (a worker follows
    the tokens topic: a token made a moment ago may not have reached it yet)."""
    import httpx

    async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=5) as http:
        try:
            for token in tokens:
                answer = await http.get("/v1/searches/-", headers={"Authorization": f"Bearer {token}"})
                if answer.status_code in (401, 429):
                    return False
        except httpx.TransportError:
            return False
    return True
