"""A hostile-input run: a real pipeline takes thousands of events an attacker or a broken
publisher could send (malformed JSON and schemas, bad base64, decompression bombs, truncated and
exotic image formats, oversized fields, keys and headers, tombstones, SSRF and traversal URLs)
interleaved with valid control images. Every hostile event must end as a dead letter of the
detector with a reason, every control as a result (and its match as a webhook), the worker must
never restart, its memory must stay bounded, and a canary listening on loopback must see no
connection at all. `tests/faults/test_hostile.py` runs it in the suite, `bench/hostile.py` longer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from PIL import Image

from facestream import client
from tests.conftest import SAMPLES
from tests.faults.run import GALLERY, PROBES, proc_parents
from tests.harness import Pipeline, free_port
from tests.helpers import Server, enrolment, png_header_only, respond

JPEG = PROBES[0].read_bytes()
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Hostile:
    kind: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    reasons: frozenset[str]  # the dead-letter reasons that are right for it


@dataclass
class HostileCounts:
    hostile: int = 0
    kinds: int = 0
    dead_lettered: int = 0  # hostile events with a detector dead letter
    wrong_reason: list[str] = field(default_factory=list)  # kind: reason, for those with another reason
    not_dead_lettered: list[str] = field(default_factory=list)  # kinds of those without one (must be none)
    controls: int = 0
    control_results: int = 0
    matches: int = 0
    webhooks: int = 0
    canary_connections: int = 0
    worker_restarts: int = 0
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_sent_mb: list[float] = field(default_factory=list)  # after each quarter of the events was sent
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            ("hostile events (kinds)", f"{self.hostile} ({self.kinds})"),
            ("  dead-lettered by the detector", self.dead_lettered),
            ("  with an unexpected reason", len(self.wrong_reason)),
            ("  not dead-lettered (must be 0)", len(self.not_dead_lettered)),
            ("control images", self.controls),
            ("  with a result", self.control_results),
            ("  matches / webhooks delivered", f"{self.matches} / {self.webhooks}"),
            ("canary connections (must be 0)", self.canary_connections),
            ("worker restarts (must be 0)", self.worker_restarts),
            (
                "worker RSS start / peak / end, MB",
                f"{self.rss_start_mb:.0f} / {self.rss_peak_mb:.0f} / {self.rss_end_mb:.0f}",
            ),
            ("  after each quarter sent, MB", " / ".join(f"{mb:.0f}" for mb in self.rss_sent_mb)),
            ("run time, s", f"{self.seconds:.1f}"),
        ]
        lines = [f"{name:42s} {value}" for name, value in rows]
        lines += [f"  reason {reason:34s} {n}" for reason, n in sorted(self.reasons.items())]
        return "\n".join(lines)


class Canary:
    """Listens on loopback (IPv4 and, where there is one, IPv6) and counts every connection: no
    hostile URL may reach it, whatever form its address is written in."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = free_port()
        self.servers: list[asyncio.Server] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def start(self) -> None:
        self.servers.append(await asyncio.start_server(self._accept, "127.0.0.1", self.port))
        # Where there is no IPv6 loopback, the IPv6 forms are still refused by the guard.
        with contextlib.suppress(OSError):
            self.servers.append(await asyncio.start_server(self._accept, "::1", self.port))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


def _deflate_bomb(side: int) -> bytes:
    """A real PNG of `side` x `side` black pixels: a few hundred KB that expand to side² bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _encoded(fmt: str, size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buffer, fmt)
    return buffer.getvalue()


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is changed to declare `width` x `height`."""
    data = bytearray(_encoded("JPEG", (16, 16)))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMB = _deflate_bomb(12_000)  # 144 megapixels in about 140 KB
HTML = b"<!doctype html><p>not an image"
# What the image server sends, by path: given with the right digest, so the content is judged.
SERVED = {"bomb": hashlib.sha256(BOMB).hexdigest(), "html": hashlib.sha256(HTML).hexdigest()}


class Corpus:
    """The hostile events, by kind; `event(i)` is the i-th, cycling through the kinds."""

    def __init__(self, pipeline: Pipeline, canary: Canary, images: Server, fifo: Path, folder: Path) -> None:
        self.pipeline = pipeline
        c, s = canary.port, images
        bad_image = frozenset({"undecodable", "unsupported_format", "image_rejected"})
        fetch_refused = frozenset({"fetch_rejected"})
        malformed = frozenset({"malformed_event"})
        big = frozenset({"too_large"})
        bomb = BOMB
        inline = {
            "truncated jpeg": (JPEG[: len(JPEG) // 2], frozenset({"undecodable"})),
            "jpeg cut at 99%": (JPEG[: len(JPEG) * 99 // 100], frozenset({"undecodable"})),
            "gif": (_encoded("GIF"), frozenset({"unsupported_format"})),
            "tiff": (_encoded("TIFF"), frozenset({"unsupported_format"})),
            "ico": (_encoded("ICO", (32, 32)), frozenset({"unsupported_format"})),
            "pdf": (b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", bad_image),
            "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', bad_image),
            "html": (b"<!doctype html><title>x</title>", bad_image),
            "random bytes": (os.urandom(4096), bad_image),
            "empty image": (b"", bad_image | malformed),  # the schema asks for 4 characters or more
            "png header bomb": (png_header_only(60_000, 60_000), big),
            "png deflate bomb": (bomb, big),
            "jpeg header 65535x65535": (_jpeg_declaring(65_535, 65_535), big),
            "png one side too long": (png_header_only(50_000, 2), big),
        }
        self.kinds: list[Callable[[int], Hostile]] = []
        for kind, (data, reasons) in inline.items():
            self.kinds.append(self._inline(kind, data, reasons))
        self.kinds += [
            self._inline("digest mismatch", JPEG, frozenset({"digest_mismatch"}), sha256="0" * 64),
            self._image("bad base64", {"data_b64": "@@@ not base64 @@@", "sha256": "0" * 64}, bad_image),
            self._image("inline over the limit", {"data_b64": "QUFB" * 100_000}, big),
        ]
        urls: dict[str, tuple[str, frozenset[str]]] = {
            "loopback canary": (f"http://127.0.0.1:{c}/a.jpg", fetch_refused),
            "octal loopback": (f"http://0177.0.0.1:{c}/a.jpg", fetch_refused),
            "hex loopback": (f"http://0x7f.1:{c}/a.jpg", fetch_refused),
            "integer loopback": (f"http://2130706433:{c}/a.jpg", fetch_refused),
            "ipv4-mapped ipv6": (f"http://[::ffff:127.0.0.1]:{c}/a.jpg", fetch_refused),
            "6to4 loopback": (f"http://[2002:7f00:1::]:{c}/a.jpg", fetch_refused),
            "nat64 loopback": (f"http://[64:ff9b::7f00:1]:{c}/a.jpg", fetch_refused),
            "ipv6 loopback": (f"http://[::1]:{c}/a.jpg", fetch_refused),
            "localhost": (f"http://localhost:{c}/a.jpg", fetch_refused),
            "userinfo": (f"http://user:pw@127.0.0.1:{c}/a.jpg", fetch_refused),
            "metadata service": ("http://169.254.169.254/latest/meta-data/", fetch_refused),
            "link-local ipv6": ("http://[fe80::1]/a.jpg", fetch_refused),
            "unspecified": (f"http://0.0.0.0:{c}/a.jpg", fetch_refused),
            "gopher": (f"gopher://127.0.0.1:{c}/_x", fetch_refused),
            "ftp": ("ftp://example.org/a.jpg", fetch_refused),
            "data uri": ("data:image/jpeg;base64,AAAA", fetch_refused),
            "file outside roots": ("file:///etc/passwd", fetch_refused),
            "file traversal": (f"file://{folder}/../../../../etc/passwd", fetch_refused),
            "file with nul": (f"file://{folder}/a.jpg%00.png", fetch_refused),
            "file on a host": ("file://evil.example/a.jpg", fetch_refused),
            "fifo in a root": (fifo.as_uri(), fetch_refused),
            "directory in a root": (folder.as_uri(), frozenset({"fetch_rejected", "fetch_failed"})),
            "missing file": ((folder / "missing.jpg").as_uri(), frozenset({"fetch_failed"})),
            "redirect to the canary": (s.url("/redirect"), frozenset({"fetch_failed", "fetch_rejected"})),
            "404": (s.url("/missing"), frozenset({"fetch_failed"})),
            "html page": (s.url("/html"), bad_image),
            "bomb over http": (s.url("/bomb"), big),
            "length over the limit": (s.url("/endless"), big | frozenset({"fetch_failed"})),
        }
        for kind, (uri, reasons) in urls.items():
            self.kinds.append(
                self._image(kind, {"uri": uri, "sha256": SERVED.get(uri.rsplit("/", 1)[-1], "0" * 64)}, reasons)
            )
        self.kinds += [
            self._raw("not json", b"{not json", malformed),
            self._raw("invalid utf-8", b'{"image_id": "\xff\xfe"}', malformed),
            self._raw("json array", b"[]", malformed),
            self._raw("json null", b"null", malformed),
            self._raw("deep nesting", b"[" * 5000 + b"]" * 5000, malformed),
            self._raw("nan", b'{"schema_version": NaN}', malformed),
            self._raw("empty value", b"", malformed),
            self._raw("tombstone", None, malformed),
            self._field("missing image", lambda e: e.pop("image"), malformed),
            self._field("missing intent", lambda e: e.pop("intent"), malformed),
            self._field("image is a list", lambda e: e.__setitem__("image", []), malformed),
            self._field("unknown kind", lambda e: e["intent"].__setitem__("kind", "surveil"), malformed),
            self._field("unknown field", lambda e: e.__setitem__("extra", 1), malformed),
            self._field("schema version 99", lambda e: e.__setitem__("schema_version", 99), malformed),
            self._field("wrong event type", lambda e: e.__setitem__("event_type", "match.result"), malformed),
            self._field("10 KB image id", lambda e: e.__setitem__("image_id", "i" * 10_000), malformed),
            self._field(
                "100 KB watchlist", lambda e: e["intent"].__setitem__("watchlists", ["w" * 100_000]), malformed
            ),
            self._field("no uri nor data", lambda e: e.__setitem__("image", {"sha256": "0" * 64}), malformed),
            self._record("binary key", os.urandom(24), [], malformed),
            self._record("100 KB key", b"k" * 100_000, [], malformed),
            self._record("100 KB trace header", None, [("trace-id", b"t" * 100_000)], malformed),
            self._record("65-char trace id", None, [("trace-id", b"t" * 65)], malformed),
            self._record("non-ascii trace id", None, [("trace-id", "é".encode())], malformed),
            self._record("many headers", None, [(f"h{i}", b"v" * 100) for i in range(60)], malformed),
        ]

    def event(self, i: int) -> Hostile:
        return self.kinds[i % len(self.kinds)](i)

    def _search(self, image_id: str, image: dict[str, str]) -> dict[str, Any]:
        """A search for `image`, built valid and then given the image as is (the client would
        refuse some of these images before they are sent: a hostile publisher need not)."""
        intent = client.search_intent("hostile run", "CASE-HOSTILE", "hostile-run")
        event = client.submission(image_id, client.image_ref(PROBES[0], self.pipeline.settings), intent, "hostile")
        event["image"] = image
        return event

    def _image(self, kind: str, image: dict[str, str], reasons: frozenset[str]) -> Callable[[int], Hostile]:
        def make(i: int) -> Hostile:
            image_id = f"hostile-{i:05d}"
            return Hostile(kind, image_id.encode(), orjson.dumps(self._search(image_id, image)), [], reasons)

        return make

    def _inline(
        self, kind: str, data: bytes, reasons: frozenset[str], sha256: str | None = None
    ) -> Callable[[int], Hostile]:
        image = {"data_b64": base64.b64encode(data).decode(), "sha256": sha256 or hashlib.sha256(data).hexdigest()}
        return self._image(kind, image, reasons)

    def _raw(self, kind: str, value: bytes | None, reasons: frozenset[str]) -> Callable[[int], Hostile]:
        return lambda i: Hostile(kind, f"hostile-{i:05d}".encode(), value, [], reasons)

    def _field(
        self, kind: str, change: Callable[[dict[str, Any]], object], reasons: frozenset[str]
    ) -> Callable[[int], Hostile]:
        def make(i: int) -> Hostile:
            image_id = f"hostile-{i:05d}"
            event = self._search(image_id, client.image_ref(PROBES[0], self.pipeline.settings))
            change(event)
            return Hostile(kind, image_id.encode(), orjson.dumps(event), [], reasons)

        return make

    def _record(
        self, kind: str, key: bytes | None, headers: Headers, reasons: frozenset[str]
    ) -> Callable[[int], Hostile]:
        def make(i: int) -> Hostile:
            image_id = f"hostile-{i:05d}"
            value = orjson.dumps(self._search(image_id, client.image_ref(PROBES[0], self.pipeline.settings)))
            return Hostile(kind, key if key is not None else image_id.encode(), value, headers, reasons)

        return make


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants (the model processes), from /proc."""
    parents = proc_parents()
    family, frontier = {pid}, [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier and p not in family]
        family.update(frontier)
    total = 0
    for member in family:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def hostile_run(workdir: Path, events: int, control_every: int = 25, limit_s: float = 600) -> HostileCounts:
    started = time.monotonic()
    counts = HostileCounts()
    canary = Canary()
    await canary.start()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        chunk = b"\xff" * 65536
        try:
            for _ in range(1000):  # 64 MB, past every limit, unless the reader hangs up first
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    routes = {
        "/redirect": respond(302, headers={"Location": f"http://127.0.0.1:{canary.port}/a.jpg"}),
        "/missing": respond(404),
        "/html": respond(200, HTML, {"Content-Type": "text/html"}),
        "/bomb": respond(200, BOMB, {"Content-Type": "image/png"}),
        "/endless": endless,
    }
    folder = workdir / "root"
    folder.mkdir()
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    async with Server(routes) as images:
        extra = {
            # Only this image server, only on its port: the canary shares its address, not its port.
            "fetch_allow_private": [f"127.0.0.1:{images.port}"],
            "fetch_deadline_s": 5.0,
            "inline_max_bytes": 256 * 1024,
            "transient_retries": 1,
            "transient_backoff_s": 0.2,
        }
        pipeline = Pipeline(workdir, [SAMPLES, folder], extra=extra)
        await pipeline.start()
        try:
            corpus = Corpus(pipeline, canary, images, fifo, folder)
            counts.kinds = len(corpus.kinds)
            for i, path in enumerate(GALLERY):
                await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, pipeline.settings, "hostile"))

            async def enrolled() -> bool:
                return sum(m["status"] == "enrolled" for m in await pipeline.events("matches")) >= len(GALLERY)

            await pipeline.wait_for(enrolled, limit_s=limit_s, what="the gallery")
            [worker] = pipeline.workers
            counts.rss_start_mb = counts.rss_peak_mb = tree_rss_mb(worker.pid)
            topic = pipeline.settings.topic("images")
            sent: dict[tuple[int, int], Hostile] = {}
            controls: list[str] = []
            pending = []
            for i in range(events):
                if i % control_every == 0:
                    image_id = f"control-{i:05d}"
                    intent = client.search_intent("hostile run", "CASE-HOSTILE", "hostile-run")
                    ref = client.image_ref(PROBES[(i // control_every) % len(PROBES)], pipeline.settings)
                    await pipeline.submit(image_id, client.submission(image_id, ref, intent, "hostile"))
                    controls.append(image_id)
                h = corpus.event(i)
                pending.append((h, await pipeline.producer.send(topic, h.value, key=h.key, headers=h.headers)))
                if len(pending) >= 200:
                    for h, future in pending:
                        meta = await future
                        sent[(meta.partition, meta.offset)] = h
                    pending.clear()
                    counts.rss_peak_mb = max(counts.rss_peak_mb, tree_rss_mb(worker.pid))
                if (i + 1) % max(1, events // 4) == 0 and len(counts.rss_sent_mb) < 4:
                    counts.rss_sent_mb.append(tree_rss_mb(worker.pid))
            for h, future in pending:
                meta = await future
                sent[(meta.partition, meta.offset)] = h
            counts.hostile, counts.controls = len(sent), len(controls)

            async def letters() -> dict[tuple[int, int], dict[str, Any]]:
                found = {}
                for _, raw in await pipeline.read("dlq"):
                    letter = orjson.loads(raw)
                    if letter["source_topic"] == topic:
                        found[(letter["partition"], letter["offset"])] = letter
                return found

            async def settled() -> bool:
                counts.rss_peak_mb = max(counts.rss_peak_mb, tree_rss_mb(worker.pid))
                done = {m["image_id"] for m in await pipeline.events("matches")}
                return set(controls) <= done and set(sent) <= set(await letters())

            await pipeline.wait_for(
                settled, limit_s=limit_s, what="every control done, every hostile event dead-lettered"
            )
            results = [m for m in await pipeline.events("matches") if m["image_id"] in set(controls)]
            made = {m["event_id"] for m in results if m["status"] == "match"}

            async def delivered() -> bool:
                return len({d.webhook_id for d in pipeline.receiver.deliveries}) >= len(made)

            await pipeline.wait_for(delivered, limit_s=limit_s, what="every match delivered")
            found = await letters()
            for position, h in sent.items():
                letter = found.get(position)
                if letter is None or letter["stage"] != "detector":
                    counts.not_dead_lettered.append(h.kind)
                    continue
                counts.dead_lettered += 1
                counts.reasons[letter["reason"]] += 1
                if letter["reason"] not in h.reasons:
                    counts.wrong_reason.append(f"{h.kind}: {letter['reason']} ({letter['detail'][:120]})")
            counts.control_results = len({m["image_id"] for m in results})
            counts.matches = len(made)
            counts.webhooks = len({d.webhook_id for d in pipeline.receiver.deliveries})
            counts.rss_end_mb = tree_rss_mb(worker.pid)
            counts.worker_restarts = 0 if worker.poll() is None else 1
        finally:
            await pipeline.stop()
            await canary.stop()
    counts.canary_connections = canary.connections
    counts.seconds = time.monotonic() - started
    return counts
