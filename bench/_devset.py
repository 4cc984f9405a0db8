"""Shared by the benchmarks: the labelled devset (../shared/data/faces/devset) and its embeddings."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEVSET = Path(os.environ.get("FACESTREAM_DEVSET", Path(__file__).resolve().parents[2] / "shared/data/faces/devset"))


def labelled_images(devset: Path = DEVSET) -> list[tuple[Path, str]]:
    with open(devset / "labels.csv", newline="") as fh:
        return [(devset / row["path"], row["identity"]) for row in csv.DictReader(fh)]


def embed_all(items: list[tuple[Path, str]], mirror: bool = False) -> tuple[np.ndarray, list[str], list[Path]]:
    """One embedding per image (its largest face); images without a face are left out. With
    `mirror`, the mean of the face's embedding and its mirror image's, normalised (test-time
    augmentation)."""
    from facestream.services.detector.logic import FaceDetector, align
    from facestream.services.embedder.logic import OnnxRuntimeBackend, prepared_path

    detector, backend = FaceDetector(), OnnxRuntimeBackend(prepared_path(ROOT / "models"))
    vectors, labels, paths = [], [], []
    for path, identity in items:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        faces = detector.detect(image) if image is not None else []
        if not faces:
            continue
        face = max(faces, key=lambda f: f.area)
        crop = align(image, face)
        if mirror:
            both = backend.embed([crop, np.ascontiguousarray(crop[:, ::-1])])
            mean = both.sum(axis=0)
            vectors.append(mean / np.linalg.norm(mean))
        else:
            vectors.append(backend.embed([crop])[0])
        labels.append(identity)
        paths.append(path)
    return np.stack(vectors), labels, paths
