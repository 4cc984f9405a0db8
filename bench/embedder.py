"""Embedder benchmark: faces/s and latency at several concurrencies, in-process ONNX Runtime
against the Triton backend (a real tritonserver on loopback; where `--triton-url` names another
server, e.g. a GPU one, that server is measured instead).

Each of `concurrency` clients embeds one face per request in a loop (what many embedder
workers do to a shared server); the in-process backend runs the same load in a thread pool.

    .venv/bin/python bench/embedder.py [--seconds 8] [--concurrency 1 4 16] [--triton-url HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _help import Help  # noqa: E402

from devtools.localtriton import LocalTritonServer, build_repository  # noqa: E402
from facestream.services.detector.logic import FaceDetector, align  # noqa: E402
from facestream.services.embedder.logic import OnnxRuntimeBackend, prepared_path  # noqa: E402
from facestream.services.embedder.triton import TritonBackend  # noqa: E402


def sample_crops() -> list[np.ndarray]:
    import cv2

    detector = FaceDetector()
    crops = []
    for path in sorted((ROOT / "samples").rglob("*.jpg")):
        image = np.asarray(cv2.imread(str(path)), dtype=np.uint8)
        crops += [align(image, f) for f in detector.detect(image)]
    return crops


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return len(ordered) / seconds, statistics.median(ordered) * 1000, p99 * 1000


async def run_async(
    embed: object, crops: list[np.ndarray], concurrency: int, seconds: float
) -> tuple[float, float, float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await embed([crops[i % len(crops)]])  # type: ignore[operator]
            latencies.append(time.perf_counter() - t0)
            i += concurrency

    started = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return summary(latencies, time.monotonic() - started)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--triton-url")
    parser.add_argument("--instances", type=int, default=2, help="model instances of the local server")
    args = parser.parse_args()
    crops = sample_crops()
    rows = []
    local = OnnxRuntimeBackend(prepared_path(ROOT / "models"))
    pool = ThreadPoolExecutor(max_workers=max(args.concurrency))
    loop = asyncio.get_running_loop()

    async def in_process(batch: list[np.ndarray]) -> np.ndarray:
        return await loop.run_in_executor(pool, local.embed, batch)

    for c in args.concurrency:
        rows.append(("in-process ONNX Runtime", c, *await run_async(in_process, crops, c, args.seconds)))
    server = None
    url = args.triton_url
    if url is None:
        work = Path(tempfile.mkdtemp(prefix="facestream-triton-bench-"))
        repo = build_repository(
            work / "repository", prepared_path(ROOT / "models"), wrong_model=False, instances=args.instances
        )
        server = LocalTritonServer(repo, work)
        server.start()
        url = server.url
    try:
        backend = TritonBackend(url, max_in_flight=max(args.concurrency))
        await backend.start()
        for c in args.concurrency:
            rows.append((f"Triton gRPC ({url})", c, *await run_async(backend.embed, crops, c, args.seconds)))
        await backend.close()
    finally:
        if server is not None:
            server.stop()
    print(f"{'backend':38s} {'concurrency':>11s} {'faces/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, c, rate, p50, p99 in rows:
        print(f"{name:38s} {c:11d} {rate:9.1f} {p50:8.1f} {p99:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
