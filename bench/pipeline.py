"""End-to-end throughput against the models alone, in one run, on the same images and cores.

1. Ceiling: the best raw path for the same two models, OpenCV's own `FaceDetectorYN` at the image's
   size (long side capped at 640) and `FaceRecognizerSF`, in 2 processes of 1 thread each.
2. Plain loop: the project's own model code (decode, detect, align, embed every face on the configured
   `embedder_runtime`), in 2 processes (no Kafka, no JSON).
3. End to end: the demo's machinery (devtools/demo.py) on a real local Kafka: the gallery is enrolled first,
   then every probe is submitted; images/s = probes / (first probe submitted .. last outcome known).

Prints all three and the ratios (target: end to end >= 90% of the ceiling), then where the end to end
run's CPU went per probe (model processes, worker, broker, this driver) beside what 0.9 of the ceiling
allows on these cores. When it starts the broker itself, an untimed run of 200 probes comes first
(a freshly started JVM spends its first minutes compiling).

    .venv/bin/python bench/pipeline.py [--images DIR] [--limit N] [--repeat K] [--square 250]

`--square 250` turns every probe into a 250x250 JPEG (the centre square, resized), the size of
the small press photos of the common face-verification sets.

Without --images it uses ../shared/data/faces/devset where present, else samples/.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from _help import Help

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
_state: dict[str, object] = {}


def _init() -> None:
    from facestream.config import load_settings
    from facestream.services.detector.logic import FaceDetector
    from facestream.services.embedder.logic import load_backend, prepared_path

    runtime = load_settings().embedder_runtime  # as the pipeline's model processes run it
    _state["detector"], _state["backend"] = FaceDetector(), load_backend(prepared_path(ROOT / "models"), runtime)


def _one(path: str) -> int:
    from facestream.config import Settings
    from facestream.services.detector.images import decode
    from facestream.services.detector.logic import align

    detector, backend = _state["detector"], _state["backend"]
    image = decode(Path(path).read_bytes(), Settings())
    faces = detector.detect(image)  # type: ignore[attr-defined]
    if faces:
        backend.embed([align(image, f) for f in faces])  # type: ignore[attr-defined]
    return len(faces)


def _init_opencv() -> None:
    import cv2

    from facestream.models import SFACE, YUNET, path_of

    cv2.setNumThreads(1)
    _state["yunet"] = cv2.FaceDetectorYN.create(str(path_of(YUNET)), "", (320, 320), 0.6, 0.3, 5000)
    _state["sface"] = cv2.FaceRecognizerSF.create(str(path_of(SFACE)), "")


def _one_opencv(path: str) -> int:
    import cv2

    yunet, sface = _state["yunet"], _state["sface"]
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return 0
    scale = min(1.0, 640 / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    yunet.setInputSize((image.shape[1], image.shape[0]))  # type: ignore[attr-defined]
    _, faces = yunet.detect(image)  # type: ignore[attr-defined]
    for face in faces if faces is not None else []:
        sface.feature(sface.alignCrop(image, face))  # type: ignore[attr-defined]
    return 0 if faces is None else len(faces)


def _timed(paths: list[Path], processes: int, init: object, one: object) -> float:
    with mp.get_context("spawn").Pool(processes, initializer=init) as pool:  # type: ignore[arg-type]
        pool.map(one, [str(p) for p in paths[: processes * 2]])  # type: ignore[arg-type]  # warm-up
        started = time.perf_counter()
        pool.map(one, [str(p) for p in paths], chunksize=4)  # type: ignore[arg-type]
        return len(paths) / (time.perf_counter() - started)


def plain_loop(paths: list[Path], processes: int = 2) -> float:
    return _timed(paths, processes, _init, _one)


def ceiling(paths: list[Path], processes: int = 2) -> float:
    """OpenCV's own YuNet and SFace path: the best the two models do on these cores."""
    return _timed(paths, processes, _init_opencv, _one_opencv)


class CpuMeter:
    """CPU seconds each process spent within a time window, from /proc read every 0.2 s, grouped:
    the worker, its model processes, the Kafka broker, this driver (publishing, the webhook
    receiver) and the rest. Linux only."""

    def __init__(self) -> None:
        self._samples: list[tuple[float, dict[int, tuple[str, int, float]]]] = []
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        found = {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            pid = int(entry)
            if cmdline:  # an exited process not yet reaped has none: keep the one it had
                self._names[pid] = cmdline
            fields = stat.rsplit(")", 1)[1].split()  # after the command name: state, ppid, ...
            found[pid] = (self._names.get(pid, ""), int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        self._samples.append((time.monotonic(), found))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._read()

    def __enter__(self) -> CpuMeter:
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _at(self, moment: float) -> dict[int, tuple[str, int, float]]:
        """Every process's CPU time as last read at or before `moment` (those gone keep their last)."""
        seen: dict[int, tuple[str, int, float]] = {}
        for at, found in self._samples:
            if at > moment:
                break
            seen.update(found)
        return seen

    def by_group(self, since: float, until: float) -> dict[str, float]:
        before, after = self._at(since), self._at(until)
        workers = {pid for pid, (cmd, _, _) in after.items() if "facestream.services run" in cmd}
        groups: dict[str, float] = {"model processes": 0.0, "worker": 0.0, "broker": 0.0, "driver": 0.0, "other": 0.0}
        for pid, (cmd, ppid, cpu) in after.items():
            spent = cpu - before.get(pid, ("", 0, 0.0))[2]
            if pid in workers:
                groups["worker"] += spent
            elif ppid in workers:
                groups["model processes"] += spent
            elif "kafka.Kafka" in cmd:
                groups["broker"] += spent
            elif pid == os.getpid():
                groups["driver"] += spent
            else:
                groups["other"] += spent
        return groups


def _square(source: Path, target: Path, side: int) -> None:
    import cv2

    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    small = cv2.resize(image[y : y + s, x : x + s], (side, side), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(target), small, [cv2.IMWRITE_JPEG_QUALITY, 92])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="submit each probe this many times (distinct ids)")
    parser.add_argument("--gallery-size", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternate both measurements this many times")
    parser.add_argument("--square", type=int, default=0, help="probes as SxS JPEGs (centre square, resized)")
    args = parser.parse_args()
    source = args.images or (ROOT.parent / "shared/data/faces/devset")
    if not source.is_dir():
        source = ROOT / "samples"
    images = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
    if args.limit:
        images = images[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="facestream-bench-"))
    gallery, probes = work / "gallery", work / "probes"
    for i, path in enumerate(images[: args.gallery_size]):
        (gallery / f"subject{i:04d}").mkdir(parents=True)
        shutil.copy(path, gallery / f"subject{i:04d}" / path.name)
    probe_paths = []
    for k in range(args.repeat):
        for i, path in enumerate(images):
            target = probes / f"r{k}" / f"{i:05d}{path.suffix.lower()}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if args.square:
                target = target.with_suffix(".jpg")
                _square(path, target, args.square)
            else:
                shutil.copy(path, target)
            probe_paths.append(target)
    shape = f", each {args.square}x{args.square}" if args.square else ""
    print(
        f"images: {len(probe_paths)} probes{shape} from {source} on {os.cpu_count()} cores; gallery {args.gallery_size}"
    )

    from devtools.demo import run_demo
    from facestream.config import load_settings
    from facestream.io.broker import local_broker

    def kafka(action: str) -> int:
        return local_broker(action, load_settings())

    started_kafka = subprocess.call(["bash", str(ROOT / "scripts/kafka.sh"), "status"], stdout=subprocess.DEVNULL) != 0
    if started_kafka:
        kafka("up")
        # A broker that has just started spends its first minutes compiling (the JVM's JIT): one
        # untimed run first, so the rounds measure the broker as it runs for months.
        warm = work / "warm-up"
        for path in probe_paths[:200]:
            (warm / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, warm / path.parent.name / path.name)
        asyncio.run(run_demo(gallery.resolve(), warm.resolve(), quiet=True))
    ceilings, plains, e2es = [], [], []
    cpu: dict[str, list[float]] = defaultdict(list)
    try:
        # Alternating rounds: a shared machine's speed drifts, so all are measured under the same drift.
        for r in range(args.rounds):
            ceilings.append(ceiling(probe_paths))
            plains.append(plain_loop(probe_paths))
            with CpuMeter() as meter:
                summary = asyncio.run(run_demo(gallery.resolve(), probes.resolve(), quiet=True))
            e2es.append(summary["timings"]["images_per_second"])
            for group, seconds in meter.by_group(*summary["timings"]["probe_window_monotonic"]).items():
                cpu[group].append(seconds * 1000 / len(probe_paths))
            print(
                f"round {r + 1}: ceiling {ceilings[-1]:.2f}, plain loop {plains[-1]:.2f}, end to end {e2es[-1]:.2f} "
                f"images/s; end to end / ceiling {e2es[-1] / ceilings[-1]:.3f}",
                flush=True,
            )
    finally:
        if started_kafka:
            kafka("down")
        shutil.rmtree(work, ignore_errors=True)
    top, plain, e2e = statistics.median(ceilings), statistics.median(plains), statistics.median(e2es)
    print(f"ceiling (OpenCV YuNet at image size <= 640 + SFace, 2 x 1 thread): median {top:.2f} images/s")
    print(f"plain loop (the project's decode+detect+align+embed, 2 processes): median {plain:.2f} images/s")
    print(f"end to end (Kafka, 4 stages, webhooks):                          median {e2e:.2f} images/s")
    print(f"end to end / ceiling {e2e / top:.3f} (target >= 0.90); plain loop / ceiling {plain / top:.3f}")
    # What the cores spent per probe from the first probe submitted to the last outcome known (to
    # 0.2 s), against what 0.9 of the ceiling leaves: cores / (0.9 * ceiling).
    spent = {group: statistics.median(values) for group, values in cpu.items()}
    shares = ", ".join(f"{group} {ms:.1f}" for group, ms in spent.items())
    budget = (os.cpu_count() or 1) * 1000 / (0.9 * top)
    print(f"end to end CPU per probe, ms: {shares}; total {sum(spent.values()):.1f} (0.9 of the ceiling: {budget:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
