"""Getting an image's bytes (claim check or inline) and decoding them safely.

Limits apply before any pixel is decoded: bytes, format (JPEG, PNG, WebP, BMP), width, height
and pixel count are read from the header, so a decompression bomb is refused without being
expanded. The sha256 of the bytes must match the one the publisher gave.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import cv2
import httpx
import numpy as np
from PIL import Image

from facestream.config import Settings
from facestream.errors import FetchFailed, FetchRejected, ImageRejected, UnsafeDestination

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "MPO"}


def _check_digest(data: bytes, expected: str | None) -> None:
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ImageRejected("sha256 of the image bytes does not match the event", reason="digest_mismatch")


def local_path(uri: str, settings: Settings) -> Path:
    """The file a `file://` claim check names, if it lies inside the configured image roots."""
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise FetchRejected("file:// URIs must not name a host")
    path = Path(unquote(parsed.path)).resolve()
    if not any(path.is_relative_to(r.resolve()) for r in settings.image_roots):
        raise FetchRejected("file path is outside the configured image_roots")
    return path


def read_local(path: Path, settings: Settings, sha256: str | None) -> bytes:
    """The bytes of an allowed local image, size- and digest-checked (runs in a model process)."""
    try:
        size = path.stat().st_size
        if size > settings.max_image_bytes:
            raise ImageRejected(f"image is {size} bytes, limit {settings.max_image_bytes}", reason="too_large")
        data = path.read_bytes()
    except OSError as exc:
        raise FetchFailed(f"cannot read file: {exc.strerror}") from exc
    _check_digest(data, sha256)
    return data


async def _read_http(uri: str, settings: Settings, client: httpx.AsyncClient) -> bytes:
    try:
        async with client.stream("GET", uri) as response:
            if response.status_code != 200:
                raise FetchFailed(f"HTTP {response.status_code} from image URI")
            declared = int(response.headers.get("content-length") or 0)
            if declared > settings.max_image_bytes:
                raise ImageRejected(f"image is {declared} bytes, limit {settings.max_image_bytes}", reason="too_large")
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > settings.max_image_bytes:
                    raise ImageRejected(f"image exceeds {settings.max_image_bytes} bytes", reason="too_large")
                chunks.append(chunk)
            return b"".join(chunks)
    except UnsafeDestination as exc:
        raise FetchRejected(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc


async def fetch(image: dict[str, Any], settings: Settings, client: httpx.AsyncClient) -> bytes:
    """The bytes of a submitted image (`image` field of image.submitted), digest-checked."""
    if "data_b64" in image:
        encoded: str = image["data_b64"]
        if len(encoded) * 3 // 4 > settings.inline_max_bytes:
            raise ImageRejected(f"inline image over {settings.inline_max_bytes} bytes; use a URI", reason="too_large")
        try:
            # binascii's strict mode is C speed; b64decode(validate=True) runs a regex first.
            data = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageRejected("inline image is not valid base64") from exc
    else:
        uri: str = image["uri"]
        scheme = urlparse(uri).scheme.lower()
        if scheme == "file":
            return await asyncio.to_thread(read_local, local_path(uri, settings), settings, image.get("sha256"))
        elif scheme in ("http", "https"):
            data = await _read_http(uri, settings, client)
        else:
            raise FetchRejected(f"unsupported URI scheme {scheme!r}")
    _check_digest(data, image.get("sha256"))
    return data


def decode(data: bytes, settings: Settings) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Decode to a BGR uint8 array, refusing bombs, huge or unsupported images before decoding."""
    if len(data) > settings.max_image_bytes:
        raise ImageRejected(f"image is {len(data)} bytes, limit {settings.max_image_bytes}", reason="too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                fmt, (width, height) = probe.format, probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}", reason="too_large") from exc
    except Exception as exc:  # Pillow raises many types for garbage input
        raise ImageRejected(f"not a decodable image: {type(exc).__name__}", reason="undecodable") from exc
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(f"image format {fmt} not accepted", reason="unsupported_format")
    if width < 1 or height < 1 or max(width, height) > settings.max_image_side:
        raise ImageRejected(f"image is {width}x{height}, side limit {settings.max_image_side}", reason="too_large")
    if width * height > settings.max_image_pixels:
        raise ImageRejected(f"image has {width * height} pixels, limit {settings.max_image_pixels}", reason="too_large")
    # OpenCV decodes faster than Pillow and applies EXIF orientation.
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ImageRejected("image data is corrupt or truncated", reason="undecodable")
    return np.asarray(pixels, dtype=np.uint8)
