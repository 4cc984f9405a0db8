"""Embeddings on real faces: unit length, stable, and same-identity pairs score above others; the
in-process runtimes give the same numbers."""

from __future__ import annotations

import base64
import itertools
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from facestream import contracts
from facestream.config import Settings
from facestream.errors import MalformedEvent
from facestream.runtime.stage import Record
from facestream.services.detector.logic import FaceDetector, align
from facestream.services.embedder.logic import (
    EmbeddingBackend,
    OnnxRuntimeBackend,
    OpenCvBackend,
    OpenVinoBackend,
    load_backend,
)
from facestream.services.embedder.stage import EmbedderStage
from tests.conftest import MODEL, SAMPLES, read
from tests.helpers import face_detected

PHOTOS = sorted(p for p in SAMPLES.rglob("*.jpg"))


def embed(detector: FaceDetector, backend: EmbeddingBackend) -> tuple[np.ndarray, list[str]]:
    crops, labels = [], []
    for path in PHOTOS:
        image = read(path)
        face = max(detector.detect(image), key=lambda f: f.area)
        crops.append(align(image, face))
        labels.append(path.parent.name)
    return backend.embed(crops), labels


def test_unit_length_and_deterministic(detector: FaceDetector, backend: EmbeddingBackend) -> None:
    vectors, _ = embed(detector, backend)
    assert vectors.shape == (len(PHOTOS), 128)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    again, _ = embed(detector, backend)
    assert np.allclose(vectors, again, atol=1e-6)


def test_same_identity_scores_above_different_identity(detector: FaceDetector, backend: EmbeddingBackend) -> None:
    vectors, labels = embed(detector, backend)
    same, different = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        (same if labels[i] == labels[j] else different).append(float(vectors[i] @ vectors[j]))
    assert min(same) > 0.4, "every mated pair of the samples is well above chance"
    assert np.mean(same) > np.mean(different) + 0.4
    # Ranking: for every photo, its nearest other photo is of the same person (where one exists).
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            assert labels[int(sims[i].argmax())] == label


async def test_stage_batches_and_validates(detector: FaceDetector, settings: Settings) -> None:
    from facestream import client

    image = read(PHOTOS[0])
    crop = align(image, detector.detect(image)[0])
    intent = client.search_intent("test search", "CASE-2", "tester")
    event = face_detected("img-1", crop, intent)
    contracts.validate("face.detected", event)
    short = {**event, "aligned": {**event["aligned"], "data_b64": base64.b64encode(b"short").decode()}}
    stage = EmbedderStage(settings)
    await stage.start()
    records = [Record(contracts.dumps(e), b"img-1", "t", 0, i) for i, e in enumerate([event, short, event])]
    outcomes = await stage.process(records)
    assert isinstance(outcomes[1].error, MalformedEvent)
    out = [o.outputs[0].value for o in (outcomes[0], outcomes[2])]
    for value in out:
        contracts.validate("face.embedded", value)
        assert value["model"] == {"name": "sface", "version": "2021dec"}
        assert abs(np.linalg.norm(value["embedding"]) - 1) < 1e-4
    assert out[0]["embedding"] == out[1]["embedding"]
    assert out[0]["event_id"] == out[1]["event_id"]


def test_the_runtimes_give_the_same_embeddings(detector: FaceDetector) -> None:
    """OpenVINO (the default, the least CPU here), OpenCV's DNN module and ONNX Runtime (Triton's
    runtime) run the same prepared graph: a gallery enrolled on one is searched on another. Batched
    or one face a call, and from several threads at once (each gets its own network or inference
    request), the numbers are the same."""
    default = load_backend(MODEL)
    assert isinstance(default, OpenVinoBackend)
    onnx = OnnxRuntimeBackend(MODEL)
    reference, _ = embed(detector, onnx)
    crops = []
    for path in PHOTOS:
        image = read(path)
        crops.append(align(image, max(detector.detect(image), key=lambda f: f.area)))
    opencv = load_backend(MODEL, "opencv")
    assert isinstance(opencv, OpenCvBackend)
    assert cv2.getNumThreads() == 1  # one thread a call: the model processes give the concurrency
    for backend, single in ((default, OpenVinoBackend(MODEL, batch=1)), (opencv, OpenCvBackend(MODEL, batch=1))):
        batched, _ = embed(detector, backend)
        assert np.abs(batched - reference).max() < 1e-5
        one_by_one = np.concatenate([single.embed([c]) for c in crops[:4]])
        assert np.abs(one_by_one - reference[:4]).max() < 1e-5
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(lambda i, b=backend: b.embed(crops[i : i + 3]), range(0, len(crops), 3)))
        assert np.abs(np.concatenate(parallel) - reference).max() < 1e-5
        assert backend.embed([]).shape == (0, 128)


def test_openvino_runs_unpinned_in_f32_on_one_thread() -> None:
    """The model processes are the concurrency, so the plugin must not pin: by default it pinned each
    process's inference thread to the same first core, and two model processes on two cores ran
    at half speed (README, Throughput). And f32, not the bf16 it picks on CPUs that have it: bf16
    would move the embeddings away from those the thresholds were calibrated on."""
    import openvino

    compiled = OpenVinoBackend(MODEL).compiled
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
