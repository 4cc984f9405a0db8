"""Each model on each runtime, one thread, on the same photos: which runtime the pipeline should use.

- YuNet: the project's detector (ONNX Runtime, the size-free graph at the image's own size, long
  side capped at 640), the same on a fixed 640x640 input (what the model file pins), and OpenCV's
  `FaceDetectorYN` at the image's size.
- SFace: the prepared model on OpenVINO (the pipeline's default), OpenCV's DNN module and ONNX Runtime,
  each one aligned face a call and in batches of 16 (per face), and OpenCV's `FaceRecognizerSF` (the
  packaged model, what the ceiling in bench/pipeline.py runs), one face a call.

Rounds alternate the runtimes (a shared machine's speed drifts); medians of the per-round means.

    .venv/bin/python bench/models.py [--images DIR] [--limit 300] [--rounds 5] [--square 250]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _help import Help  # noqa: E402

from facestream.cli import IMAGE_SUFFIXES  # noqa: E402
from facestream.models import SFACE, YUNET, path_of  # noqa: E402
from facestream.services.detector.logic import MAX_SIDE, FaceDetector, align  # noqa: E402
from facestream.services.embedder.logic import (  # noqa: E402
    OnnxRuntimeBackend,
    OpenCvBackend,
    OpenVinoBackend,
    prepared_path,
    preprocess,
)


def load(folder: Path, limit: int, square: int) -> list[np.ndarray]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        if square:
            h, w = image.shape[:2]
            s = min(h, w)
            y, x = (h - s) // 2, (w - s) // 2
            image = cv2.resize(image[y : y + s, x : x + s], (square, square), interpolation=cv2.INTER_AREA)
        images.append(image)
    return images


def fitted(image: np.ndarray) -> np.ndarray:
    scale = min(1.0, MAX_SIDE / max(image.shape[:2]))
    return image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Help)
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/faces/devset")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--square", type=int, default=0, help="each photo as its centre square, resized to SxS")
    args = p.parse_args()
    if not args.images.is_dir():
        args.images = ROOT / "samples"
    cv2.setNumThreads(1)
    images = load(args.images, args.limit, args.square)
    detector = FaceDetector()
    fixed = FaceDetector()

    def at_640(image: np.ndarray) -> Any:  # what the pinned 640x640 input costs: pad every image to it
        canvas = np.zeros((MAX_SIDE, MAX_SIDE, 3), np.uint8)
        small = fitted(image) if max(image.shape[:2]) > MAX_SIDE else image
        canvas[: small.shape[0], : small.shape[1]] = small
        return fixed.detect(canvas)

    yunet = cv2.FaceDetectorYN.create(str(path_of(YUNET)), "", (320, 320), 0.6, 0.3, 5000)

    def opencv_yunet(image: np.ndarray) -> Any:
        small = fitted(image)
        yunet.setInputSize((small.shape[1], small.shape[0]))
        return yunet.detect(small)

    crops = []
    for image in images:
        faces = detector.detect(image)
        if faces:
            crops.append(align(image, faces[0]))
    model = prepared_path(ROOT / "models")
    backend = OnnxRuntimeBackend(model)
    opencv, single = OpenCvBackend(model), OpenCvBackend(model, 1)
    openvino, openvino_single = OpenVinoBackend(model), OpenVinoBackend(model, 1)
    batches = [crops[i : i + 16] for i in range(0, len(crops), 16)]
    sface = cv2.FaceRecognizerSF.create(str(path_of(SFACE)), "")
    runs: dict[str, tuple[list[Any], Callable[[Any], Any]]] = {
        "YuNet, ONNX Runtime at the image's size (the pipeline)": (images, detector.detect),
        "YuNet, ONNX Runtime at 640x640": (images, at_640),
        "YuNet, OpenCV at the image's size": (images, opencv_yunet),
        "SFace, OpenVINO, batches of 16 (the pipeline; per face)": (batches, openvino.embed),
        "SFace, OpenVINO, one face a call": (crops, lambda crop: openvino_single.embed([crop])),
        "SFace, OpenCV DNN, batches of 16 (per face)": (batches, opencv.embed),
        "SFace, OpenCV DNN, one face a call": (crops, lambda crop: single.embed([crop])),
        "SFace, ONNX Runtime, one face a call": (crops, lambda crop: backend.embed([crop])),
        "SFace, ONNX Runtime, batches of 16 (per face)": (
            batches,
            lambda batch: backend.session.run(None, {backend.input_name: preprocess(batch)}),
        ),
        "SFace, OpenCV FaceRecognizerSF (the ceiling's), one face a call": (crops, sface.feature),
    }
    shape = f", each {args.square}x{args.square}" if args.square else ""
    print(
        f"{len(images)} photos{shape} from {args.images}, {len(crops)} faces; {args.rounds} rounds, 1 thread; "
        "ms a call (a face where a row says per face)"
    )
    for items, run in runs.values():  # warm-up
        for item in items[:5]:
            run(item)
    seconds: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for name, (items, run) in runs.items():
            started = time.perf_counter()
            for item in items:
                run(item)
            calls = sum(len(item) for item in items) if items is batches else len(items)
            seconds[name].append((time.perf_counter() - started) / calls)
    for name, values in seconds.items():
        print(f"  {name:66s} {statistics.median(values) * 1000:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
