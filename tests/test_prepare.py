"""The prepared SFace model (install step) equals the packaged one, on real aligned faces too."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from facestream.models import SFACE, path_of
from facestream.services.detector.logic import FaceDetector, align
from facestream.services.embedder.logic import prepared_path
from facestream.services.embedder.prepare import TOLERANCE, max_difference, prepare_sface
from tests.conftest import SAMPLES, read


def test_prepared_model_is_equivalent_and_batches(tmp_path: Path, detector: FaceDetector) -> None:
    target = prepare_sface(tmp_path)  # a fresh preparation, not the installed file
    assert target == prepared_path(tmp_path)
    images = [read(p) for p in sorted(SAMPLES.rglob("*.jpg"))]
    faces = [align(image, face) for image in images for face in detector.detect(image)]
    assert len(faces) >= 10
    assert max_difference(path_of(SFACE), target, faces) <= TOLERANCE
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    [data] = session.get_inputs()
    assert data.name == "data" and not isinstance(data.shape[0], int)  # noqa: PT018
    assert len(session.get_inputs()) == 1, "weights are no longer graph inputs"
    assert prepare_sface(tmp_path) == target  # idempotent
