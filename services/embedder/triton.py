"""The embedder's Triton backend: SFace served by NVIDIA Triton over async gRPC.

One channel for the worker's life; each stream batch goes out as few requests as the model's
max batch allows, with a bounded number in flight (back-pressure, not unbounded memory) and a
per-request timeout. If the server becomes unavailable mid-stream the request is retried with
backoff until it answers (up to `retry_for_s`), so the batch is neither lost nor duplicated: the
stage emits its events only once every embedding is back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from facestream.errors import ModelError
from facestream.ops.logs import get_logger
from facestream.ops.metrics import TRITON_RETRIES, TRITON_UP
from facestream.services.embedder.logic import Crop, FloatArray, l2_normalise, preprocess

log = get_logger(__name__)
EXPECTED_INPUT = ("FP32", [3, 112, 112])
EXPECTED_DIM = 128
# Errors that mean "the request itself is wrong": retrying cannot help.
FATAL = ("StatusCode.INVALID_ARGUMENT", "StatusCode.UNIMPLEMENTED", "StatusCode.PERMISSION_DENIED")


def check_metadata(metadata: dict[str, Any], config: dict[str, Any]) -> tuple[str, str, int]:
    """(input name, output name, max batch) if the served model is what the embedder expects;
    else `ModelError` saying what differs."""
    problems = []
    inputs, outputs = metadata.get("inputs", []), metadata.get("outputs", [])
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} inputs, expected 1")
    if len(outputs) != 1:
        problems.append(f"{len(outputs)} outputs, expected 1")
    if problems:
        raise ModelError(f"Triton model {metadata.get('name')!r}: " + "; ".join(problems))
    max_batch = int(config.get("max_batch_size", 0))
    inp, out = inputs[0], outputs[0]
    dims = [int(d) for d in inp["shape"]][1 if max_batch else 0 :]
    if inp["datatype"] != EXPECTED_INPUT[0]:
        problems.append(f"input {inp['name']} datatype {inp['datatype']}, expected {EXPECTED_INPUT[0]}")
    if dims != EXPECTED_INPUT[1]:
        problems.append(f"input {inp['name']} shape {dims}, expected {EXPECTED_INPUT[1]} (NCHW RGB crop)")
    out_dims = [int(d) for d in out["shape"]][1 if max_batch else 0 :]
    if out_dims != [EXPECTED_DIM]:
        problems.append(f"output {out['name']} shape {out_dims}, expected [{EXPECTED_DIM}]")
    if out["datatype"] != "FP32":
        problems.append(f"output {out['name']} datatype {out['datatype']}, expected FP32")
    if problems:
        raise ModelError(f"Triton model {metadata.get('name')!r} does not fit the embedder: " + "; ".join(problems))
    return inp["name"], out["name"], max(1, max_batch)


class TritonBackend:
    """Implements the embedding backend interface (async) against a Triton server."""

    dim = EXPECTED_DIM

    def __init__(
        self,
        url: str,
        model_name: str = "sface",
        model_version: str = "",
        *,
        timeout_s: float = 10.0,
        max_in_flight: int = 4,
        retry_for_s: float = 300.0,
    ) -> None:
        self.url = url
        self.triton_model = model_name
        self.triton_version = model_version
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self.limit = asyncio.Semaphore(max_in_flight)
        self.client: Any = None
        self.model_name = model_name
        self.model_version = ""
        self.unavailable_retries = 0  # also counted in facestream_triton_unavailable_retries_total

    async def start(self) -> None:
        """Live, ready and model checks; fails fast with what differs."""
        self.client = triton.InferenceServerClient(self.url)
        try:
            if not await self.client.is_server_live() or not await self.client.is_server_ready():
                raise ModelError(f"Triton at {self.url} is not ready")
            if not await self.client.is_model_ready(self.triton_model, self.triton_version):
                raise ModelError(
                    f"Triton model {self.triton_model!r} (version {self.triton_version or 'latest'}) is not ready"
                )
            metadata = await self.client.get_model_metadata(self.triton_model, self.triton_version, as_json=True)
            config = (await self.client.get_model_config(self.triton_model, self.triton_version, as_json=True))[
                "config"
            ]
        except InferenceServerException as exc:
            await self.close()
            raise ModelError(f"Triton at {self.url}: {exc.message()}") from exc
        except ModelError:
            await self.close()
            raise
        try:
            self.input_name, self.output_name, self.max_batch = check_metadata(metadata, config)
        except ModelError:
            await self.close()
            raise
        declared = config.get("parameters", {}).get("facestream_model_version", {}).get("string_value")
        self.model_version = declared or f"triton-{metadata['versions'][-1]}"
        TRITON_UP.labels(self.url).set(1)  # from the start: an alert on it needs the series before any outage
        log.info(
            "triton_ready", url=self.url, model=self.triton_model, version=self.model_version, max_batch=self.max_batch
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def _infer(self, batch: FloatArray) -> FloatArray:
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.1
        while True:
            request = InferInput(self.input_name, list(batch.shape), "FP32")
            request.set_data_from_numpy(batch)
            try:
                async with self.limit:
                    result = await self.client.infer(
                        self.triton_model,
                        [request],
                        model_version=self.triton_version,
                        outputs=[InferRequestedOutput(self.output_name)],
                        client_timeout=self.timeout_s,
                    )
                output: FloatArray = result.as_numpy(self.output_name).astype(np.float32)
                if delay > 0.1:
                    log.info("triton_available_again", url=self.url)
                    TRITON_UP.labels(self.url).set(1)
                return output
            except InferenceServerException as exc:
                if str(exc.status()) in FATAL or time.monotonic() + delay > deadline:
                    raise
                self.unavailable_retries += 1
                TRITON_RETRIES.labels(self.url).inc()
                TRITON_UP.labels(self.url).set(0)
                log.warning(
                    "triton_unavailable",
                    url=self.url,
                    status=str(exc.status()),
                    error=(exc.message() or "")[:200],
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def embed(self, crops: list[Crop]) -> FloatArray:
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = preprocess(crops)
        parts = await asyncio.gather(
            *(self._infer(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch))
        )
        return l2_normalise(np.concatenate(parts))
