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
import os
import stat
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
    raw = unquote(parsed.path)
    if "\x00" in raw:
        raise FetchRejected("file path contains a NUL byte")
    path = Path(raw).resolve()
    if not any(path.is_relative_to(r.resolve()) for r in settings.image_roots):
        raise FetchRejected("file path is outside the configured image_roots")
    return path


def read_local(path: Path, settings: Settings, sha256: str | None) -> bytes:
    """The bytes of an allowed local image, size- and digest-checked (runs in a model process).
    Regular files only: opened without blocking and checked on the open descriptor, so a FIFO or a
    device placed under an image root can neither hold the reader nor be swapped in afterwards."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FetchFailed(f"cannot read file: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses a directory itself
        os.close(fd)
        raise FetchRejected("not a regular file")
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if info.st_size > settings.max_image_bytes:
            raise ImageRejected(f"image is {info.st_size} bytes, limit {settings.max_image_bytes}", reason="too_large")
        try:
            data = fh.read(settings.max_image_bytes + 1)
        except OSError as exc:
            raise FetchFailed(f"cannot read file: {exc.strerror}") from exc
    if len(data) > settings.max_image_bytes:  # grew since the check
        raise ImageRejected(f"image exceeds {settings.max_image_bytes} bytes", reason="too_large")
    _check_digest(data, sha256)
    return data


async def _read_http(uri: str, settings: Settings, client: httpx.AsyncClient) -> bytes:
    # A total deadline: per-operation timeouts alone let a server that sends a byte now and then
    # (or a resolver that never answers) hold the fetch for as long as it likes.
    try:
        async with asyncio.timeout(settings.fetch_deadline_s):
            return await _read_http_within(uri, settings, client)
    except TimeoutError as exc:
        detail = f"image fetch took longer than fetch_deadline_s ({settings.fetch_deadline_s:g} s)"
        raise FetchFailed(detail, transient=True) from exc


async def _read_http_within(uri: str, settings: Settings, client: httpx.AsyncClient) -> bytes:
    try:
        async with client.stream("GET", uri) as response:
            if response.status_code != 200:
                # The server's trouble may pass (408, 429, 5xx); a 404 or a 403 will not.
                again = response.status_code in {408, 425, 429} or response.status_code >= 500
                raise FetchFailed(f"HTTP {response.status_code} from image URI", transient=again)
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
    except httpx.InvalidURL as exc:  # e.g. a host httpx will not parse ("0177.0.0.1")
        raise FetchRejected(f"invalid image URL: {exc}") from exc
    except httpx.HTTPError as exc:  # unreachable, reset, timed out: may work later
        raise FetchFailed(f"{type(exc).__name__}: {exc}", transient=True) from exc


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


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's data runs to its end-of-image marker. The segments before the first scan
    are walked by their lengths (an EXIF thumbnail inside APP1 has markers of its own); inside the
    entropy-coded data every 0xFF is stuffed or a restart marker, so an EOI after the first scan
    is the image's own. Data after the EOI (motion photos append a video) is allowed."""
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", i) != -1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


def _complete(fmt: str | None, data: bytes) -> bool:
    """Whether the image's data is all there, from its container's own structure."""
    if fmt in {"JPEG", "MPO"}:
        return _jpeg_complete(data)
    if fmt == "PNG":
        return b"\x00\x00\x00\x00IEND\xaeB`\x82" in data
    if fmt == "WEBP":  # RIFF: the size after the 8-byte header
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")
    if fmt == "BMP":  # the file size in the header (0 is allowed for uncompressed files)
        return len(data) >= int.from_bytes(data[2:6], "little")
    return True


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
    if not _complete(fmt, data):
        # Decoders fill a cut-off image with grey and carry on; a face found in half a photo is
        # not a search anyone asked for.
        raise ImageRejected(f"{fmt} image is truncated (incomplete data)", reason="undecodable")
    # OpenCV decodes faster than Pillow and applies EXIF orientation.
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ImageRejected("image data is corrupt or truncated", reason="undecodable")
    return np.asarray(pixels, dtype=np.uint8)
