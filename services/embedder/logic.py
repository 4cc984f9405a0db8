"""Face embedding backends. `EmbeddingBackend` is the interface; `OpenVinoBackend` (the embedded
default), `OpenCvBackend` and `OnnxRuntimeBackend` run SFace in-process. A Triton backend implements
the same interface."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import numpy as np
import onnxruntime as ort

from facestream.errors import ModelError
from facestream.models import ALIGNED_SIZE, SFACE, session_options

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Crop = np.ndarray[Any, np.dtype[np.uint8]]
Runtime = Literal["openvino", "opencv", "onnxruntime"]
# Faces per OpenCV DNN or OpenVINO call: there batches of 16 cost less per face (or the same) than one
# a call, while on ONNX Runtime's CPU provider they cost more (bench/models.py prints them all).
CPU_BATCH = 16


class EmbeddingBackend(Protocol):
    """Turns aligned 112x112 BGR crops into L2-normalised embeddings."""

    model_name: str
    model_version: str
    dim: int

    def embed(self, crops: list[Crop]) -> FloatArray:
        """Embeddings of `crops`, shape (len(crops), dim), each row of unit length."""
        ...


@runtime_checkable
class AsyncEmbeddingBackend(Protocol):
    """The same contract for a remote model server (Triton): started, awaited, closed."""

    model_name: str
    model_version: str
    dim: int

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def embed(self, crops: list[Crop]) -> FloatArray: ...


def prepared_path(repository: Path) -> Path:
    """Where the prepared SFace model lies in a model repository (Triton's layout)."""
    return repository / "sface" / "1" / "model.onnx"


def preprocess(crops: list[Crop]) -> FloatArray:
    """NCHW float32 RGB, unscaled, as SFace expects."""
    for crop in crops:
        if crop.shape != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
            raise ValueError(f"crop shape {crop.shape} != (112, 112, 3)")
    batch = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2RGB) for c in crops])
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def l2_normalise(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


class _InProcessBackend:
    """What the in-process runtimes share: the prepared file's check, `embed` as calls of at most
    `max_batch` faces to `_forward`, and `_local` for what a runtime must hold one of per thread."""

    model_name = SFACE.name
    model_version = SFACE.version
    dim: int

    def __init__(self, model: Path, batch: int) -> None:
        if not model.exists():
            raise ModelError(
                f"{model} is missing: prepare it with `facestream prepare-model` (part of scripts/install.sh)"
            )
        self.model, self.max_batch = model, batch
        self._local = threading.local()

    def _forward(self, batch: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _output_dim(self) -> int:
        """The embedding's length, from one blank face through the runtime."""
        return int(self._forward(np.zeros((1, 3, ALIGNED_SIZE, ALIGNED_SIZE), np.float32)).shape[1])

    def embed(self, crops: list[Crop]) -> FloatArray:
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = preprocess(crops)
        parts = [self._forward(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return l2_normalise(np.concatenate(parts).astype(np.float32))


class OnnxRuntimeBackend(_InProcessBackend):
    """SFace on ONNX Runtime in this process. Thread-safe: call `embed` from several threads."""

    def __init__(self, model: Path, threads: int = 1) -> None:
        # The packaged file has a fixed batch of 1; a prepared model may have a dynamic one, but one
        # face a call is the fastest per face on ONNX Runtime's CPU provider (bench/models.py).
        super().__init__(model, batch=1)
        self.session = ort.InferenceSession(str(model), session_options(threads), providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if list(shape[1:]) != [3, ALIGNED_SIZE, ALIGNED_SIZE]:
            raise ModelError(f"SFace input shape {shape} != [N, 3, 112, 112]")
        self.output_name = self.session.get_outputs()[0].name
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def _forward(self, batch: FloatArray) -> FloatArray:
        out: FloatArray = self.session.run([self.output_name], {self.input_name: batch})[0]
        return out


class OpenCvBackend(_InProcessBackend):
    """SFace on OpenCV's DNN module in this process: the same graph and the same numbers as ONNX
    Runtime (within 1e-5), at less CPU than ONNX Runtime on the CPUs measured (bench/models.py). A
    `cv2.dnn.Net` is not thread-safe, so each thread that calls `embed` gets its own."""

    def __init__(self, model: Path, batch: int = CPU_BATCH) -> None:
        super().__init__(model, batch)
        # One thread a call, like ONNX Runtime's options: concurrency comes from the model processes.
        cv2.setNumThreads(1)
        self.dim = self._output_dim()

    def _forward(self, batch: FloatArray) -> FloatArray:
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = cv2.dnn.readNetFromONNX(str(self.model))
        net.setInput(batch)
        return np.array(net.forward(), dtype=np.float32)


class OpenVinoBackend(_InProcessBackend):
    """SFace on OpenVINO's CPU plugin in this process: the same graph and numbers as ONNX Runtime
    (within 1e-5), at the least CPU a face of the three runtimes on the CPUs measured
    (bench/models.py). An inference request is not thread-safe, so each calling thread gets its own."""

    def __init__(self, model: Path, batch: int = CPU_BATCH) -> None:
        super().__init__(model, batch)
        import openvino  # here, not at the top: 0.2 s of every command's start, needed by model processes only

        core = openvino.Core()
        # One thread a call, as on the other runtimes: concurrency comes from the model processes,
        # and they must not be pinned (the plugin pins every process's thread to the same first
        # core: two model processes on two cores then ran at half speed). f32 throughout: on CPUs
        # with bf16 units the plugin would otherwise compute in bf16 and the embeddings (and every
        # calibrated threshold) would move.
        config = {
            "INFERENCE_NUM_THREADS": 1,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(core.read_model(str(model)), "CPU", config)
        self.dim = self._output_dim()

    def _forward(self, batch: FloatArray) -> FloatArray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return np.array(request.infer({0: batch})[0], dtype=np.float32)


@functools.cache
def load_backend(model: Path, runtime: Runtime = "openvino") -> EmbeddingBackend:
    """The in-process backend for the prepared model file `model`, one per process (a model
    process loads it once, see `facestream.runtime.compute`)."""
    if runtime == "onnxruntime":
        return OnnxRuntimeBackend(model)
    if runtime == "opencv":
        return OpenCvBackend(model)
    return OpenVinoBackend(model)


def embed_with(model: Path, runtime: Runtime, crops: list[Crop]) -> FloatArray:
    """Embed with this process's backend for `model`; module-level so a process pool can run it."""
    return load_backend(model, runtime).embed(crops)
