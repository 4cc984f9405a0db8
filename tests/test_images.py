"""Fetching and decoding images safely: real files, a real HTTP server on loopback, hostile input."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from PIL import Image

from facestream.config import Settings
from facestream.errors import FetchFailed, FetchRejected, ImageRejected
from facestream.io.net import guarded_client
from facestream.services.detector.images import decode, fetch
from tests.conftest import sample
from tests.helpers import Server, png_header_only, respond

JPEG = sample("azure_family1_dad").read_bytes()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_decodes_a_real_photo(settings: Settings) -> None:
    pixels = decode(JPEG, settings)
    assert pixels.ndim == 3
    assert pixels.shape[2] == 3
    assert pixels.dtype.name == "uint8"
    assert pixels.shape[:2] == Image.open(io.BytesIO(JPEG)).size[::-1]


def test_grayscale_and_alpha_png_become_bgr(settings: Settings) -> None:
    for mode in ("L", "RGBA", "P"):
        pixels = decode(encoded(Image.new(mode, (40, 30)), "PNG"), settings)
        assert pixels.shape == (30, 40, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "undecodable"),
        (b"this is not an image at all", "undecodable"),
        (JPEG[:200], "undecodable"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "undecodable"),
    ],
)
def test_corrupt_input_is_refused(settings: Settings, data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as info:
        decode(data, settings)
    assert info.value.reason == reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
@pytest.mark.parametrize("kept", [0.5, 0.9, 0.99])
def test_truncated_images_are_refused(settings: Settings, fmt: str, kept: float) -> None:
    """A cut-off image decodes to a grey-filled picture without an error from the decoder; it is
    refused instead. The whole image still decodes."""
    photo = Image.open(io.BytesIO(JPEG)).convert("RGB")
    whole = JPEG if fmt == "JPEG" else encoded(photo, fmt)
    assert decode(whole, settings).shape[:2] == photo.size[::-1]
    with pytest.raises(ImageRejected, match=r"truncated|not a decodable") as info:
        decode(whole[: int(len(whole) * kept)], settings)
    assert info.value.reason == "undecodable"


def test_progressive_jpeg_and_data_after_the_image_are_accepted(settings: Settings) -> None:
    """A progressive JPEG (several scans) and bytes appended after the end-of-image marker (as
    motion photos append a video) are complete images."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(JPEG)).save(buffer, "JPEG", progressive=True, quality=85)
    progressive = buffer.getvalue()
    assert decode(progressive, settings).ndim == 3
    assert decode(JPEG + b"\x00\x00ftypmp42" + bytes(range(256)) * 40, settings).ndim == 3
    with pytest.raises(ImageRejected, match="truncated"):
        decode(progressive[: len(progressive) * 2 // 3], settings)


def test_wrong_types_are_refused(settings: Settings) -> None:
    for fmt in ("GIF", "TIFF"):
        with pytest.raises(ImageRejected) as info:
            decode(encoded(Image.new("RGB", (20, 20)), fmt), settings)
        assert info.value.reason == "unsupported_format"


def test_decompression_bomb_is_refused_before_decoding(settings: Settings) -> None:
    bomb = png_header_only(60_000, 60_000)  # 3.6 gigapixels declared in ~100 bytes
    assert len(bomb) < 200
    with pytest.raises(ImageRejected) as info:
        decode(bomb, settings)
    assert info.value.reason == "too_large"


def test_pixel_and_side_limits(settings: Settings) -> None:
    tight = Settings(max_image_pixels=10_000, max_image_side=100_000)
    with pytest.raises(ImageRejected, match="pixels"):
        decode(png_header_only(200, 200), tight)
    with pytest.raises(ImageRejected, match="side"):
        decode(png_header_only(20_000, 2), settings)
    with pytest.raises(ImageRejected, match="bytes"):
        decode(JPEG, Settings(max_image_bytes=1000))


async def test_inline_image_with_digest(settings: Settings) -> None:
    async with httpx.AsyncClient() as client:
        data = await fetch({"data_b64": base64.b64encode(JPEG).decode(), "sha256": digest(JPEG)}, settings, client)
        assert data == JPEG
        with pytest.raises(ImageRejected) as info:
            await fetch({"data_b64": base64.b64encode(JPEG).decode(), "sha256": "0" * 64}, settings, client)
        assert info.value.reason == "digest_mismatch"
        with pytest.raises(ImageRejected, match="inline image over"):
            await fetch({"data_b64": base64.b64encode(JPEG).decode()}, Settings(inline_max_bytes=100), client)
        with pytest.raises(ImageRejected, match="base64"):
            await fetch({"data_b64": "@@@not base64@@@"}, settings, client)


async def test_file_claim_check_is_confined_to_image_roots(settings: Settings, tmp_path: Path) -> None:
    inside = tmp_path / "a.jpg"
    inside.write_bytes(JPEG)
    async with httpx.AsyncClient() as client:
        assert await fetch({"uri": inside.as_uri(), "sha256": digest(JPEG)}, settings, client) == JPEG
        for uri in ("file:///etc/passwd", f"file://{tmp_path}/../../etc/passwd", "file://evil.example/x.jpg"):
            with pytest.raises(FetchRejected):
                await fetch({"uri": uri, "sha256": "0" * 64}, settings, client)
        with pytest.raises(FetchFailed):
            await fetch({"uri": (tmp_path / "missing.jpg").as_uri(), "sha256": "0" * 64}, settings, client)
        with pytest.raises(FetchRejected, match="scheme"):
            await fetch({"uri": "ftp://example.org/a.jpg", "sha256": "0" * 64}, settings, client)
        with pytest.raises(FetchRejected, match="NUL"):  # was an internal error
            await fetch({"uri": f"file://{tmp_path}/a.jpg%00.png", "sha256": "0" * 64}, settings, client)


@pytest.mark.parametrize(
    "uri", ["http://0177.0.0.1/a.jpg", "http://0x7f.1/a.jpg", "http://[2002:7f00:1::]/a.jpg", "http://[::]/a.jpg"]
)
async def test_obfuscated_and_transition_addresses_are_refusals(uri: str) -> None:
    """Octal and hex IPv4 forms, and IPv6 forms that embed a loopback address, are refused as
    such (not internal errors, not connection attempts)."""
    async with guarded_client((), 1.0) as client:
        with pytest.raises(FetchRejected):
            await fetch({"uri": uri, "sha256": "0" * 64}, Settings(), client)


async def test_http_claim_check_through_the_ssrf_guard() -> None:
    routes = {
        "/ok.jpg": respond(200, JPEG),
        "/missing.jpg": respond(404),
        "/moved.jpg": respond(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
    }
    async with Server(routes) as server:
        allowed = Settings(fetch_allow_private=("127.0.0.1",))
        async with guarded_client(allowed.fetch_allow_private, 2.0) as client:
            assert await fetch({"uri": server.url("/ok.jpg"), "sha256": digest(JPEG)}, allowed, client) == JPEG
            with pytest.raises(FetchFailed, match="404"):
                await fetch({"uri": server.url("/missing.jpg"), "sha256": digest(JPEG)}, allowed, client)
            # Redirects are never followed (they are a classic SSRF pivot).
            with pytest.raises(FetchFailed, match="302"):
                await fetch({"uri": server.url("/moved.jpg"), "sha256": digest(JPEG)}, allowed, client)
            with pytest.raises(ImageRejected, match=r"exceeds|bytes"):
                await fetch(
                    {"uri": server.url("/ok.jpg"), "sha256": digest(JPEG)},
                    Settings(fetch_allow_private=("127.0.0.1",), max_image_bytes=1000),
                    client,
                )
        # Without the allow-list, loopback is refused before any connection is made.
        async with guarded_client((), 2.0) as client:
            before = len(server.seen)
            with pytest.raises(FetchRejected, match="non-public"):
                await fetch({"uri": server.url("/ok.jpg"), "sha256": digest(JPEG)}, Settings(), client)
            assert len(server.seen) == before


async def test_unreachable_url_fails_clearly() -> None:
    allowed = Settings(fetch_allow_private=("127.0.0.1",))
    async with guarded_client(allowed.fetch_allow_private, 1.0) as client:
        with pytest.raises(FetchFailed, match="Connect"):
            await fetch({"uri": "http://127.0.0.1:9/a.jpg", "sha256": "0" * 64}, allowed, client)


async def test_an_allowed_webhook_receiver_is_no_allowed_image_host(tmp_path: Path) -> None:
    """The receiver's host is on the webhook allow-list; an image URL pointing at any port of that
    host is still refused (the two lists are separate)."""
    settings = Settings(webhook_allow_private=("127.0.0.1",), image_roots=(tmp_path,))
    policy = guarded_client(settings.fetch_allow_private, 2.0, setting="fetch_allow_private")
    async with Server({"/ok.jpg": respond(200, JPEG)}) as server, policy as client:
        with pytest.raises(FetchRejected, match="not in fetch_allow_private"):
            await fetch({"uri": server.url("/ok.jpg"), "sha256": digest(JPEG)}, settings, client)
        assert server.seen == []


async def test_a_trickling_server_is_cut_off_at_the_deadline() -> None:
    """A server that sends one byte every 0.3 s never trips the per-operation timeout (1 s); the
    total deadline ends the fetch anyway."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        for byte in JPEG[:200]:
            await response.write(bytes([byte]))
            await asyncio.sleep(0.3)
        return response

    settings = Settings(fetch_allow_private=("127.0.0.1",), fetch_timeout_s=1, fetch_deadline_s=2)
    async with Server({"/slow.jpg": trickle}) as server, guarded_client(settings.fetch_allow_private, 1.0) as client:
        started = time.monotonic()
        with pytest.raises(FetchFailed, match="fetch_deadline_s"):
            await fetch({"uri": server.url("/slow.jpg"), "sha256": digest(JPEG)}, settings, client)
        assert time.monotonic() - started < 4


async def test_only_regular_files_are_read(tmp_path: Path) -> None:
    """A FIFO under an image root would block a reader forever; it is refused at once, as are
    devices and folders."""
    fifo = tmp_path / "wait.jpg"
    os.mkfifo(fifo)
    settings = Settings(image_roots=(tmp_path,))
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        with pytest.raises(FetchRejected, match="not a regular file"):
            await asyncio.wait_for(fetch({"uri": fifo.as_uri(), "sha256": "0" * 64}, settings, client), 10)
        with pytest.raises(FetchRejected, match="not a regular file"):
            await fetch(
                {"uri": Path("/dev/zero").as_uri(), "sha256": "0" * 64}, Settings(image_roots=(Path("/dev"),)), client
            )
        with pytest.raises(FetchRejected, match="not a regular file"):  # was an internal error
            await fetch({"uri": tmp_path.as_uri(), "sha256": "0" * 64}, settings, client)
    assert time.monotonic() - started < 5
