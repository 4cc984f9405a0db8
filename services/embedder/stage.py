"""Embedder stage: face.detected batches → face.embedded, one backend call per batch."""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from facestream import contracts
from facestream.config import Settings
from facestream.contracts import ids
from facestream.contracts.timeutil import now_iso
from facestream.errors import MalformedEvent
from facestream.models import SFACE
from facestream.ops.logs import get_logger
from facestream.ops.metrics import EMBED_BATCH, INFERENCE_SECONDS
from facestream.runtime.stage import FACE_FIELDS, Outcome, Output, Record, carry
from facestream.services.embedder.logic import (
    AsyncEmbeddingBackend,
    Crop,
    EmbeddingBackend,
    FloatArray,
    embed_with,
    prepared_path,
)

log = get_logger(__name__)
CROP_BYTES = 112 * 112 * 3


def crop_of(event: dict[str, Any]) -> Crop:
    raw = base64.b64decode(event["aligned"]["data_b64"])
    if len(raw) != CROP_BYTES:
        raise MalformedEvent(f"aligned crop has {len(raw)} bytes, expected {CROP_BYTES}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(112, 112, 3)


class EmbedderStage:
    """Embeds with `backend` when one is given (in threads if it is synchronous, awaited if it is
    asynchronous, like the Triton backend); otherwise with the in-process SFace backend through
    `executor` (the worker's model process pool, see `facestream.runtime.compute`)."""

    name = "embedder"

    def __init__(
        self,
        settings: Settings,
        backend: EmbeddingBackend | AsyncEmbeddingBackend | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.executor = executor if backend is None else None
        local = functools.partial(embed_with, prepared_path(settings.model_repository), settings.embedder_runtime)
        self.embed: Callable[[list[Crop]], Any] = backend.embed if backend else local
        self.asynchronous = inspect.iscoroutinefunction(self.embed)

    @property
    def model(self) -> dict[str, str]:
        if self.backend is None:
            return {"name": SFACE.name, "version": SFACE.version}
        return {"name": self.backend.model_name, "version": self.backend.model_version}

    async def start(self) -> None:
        if isinstance(self.backend, AsyncEmbeddingBackend):
            await self.backend.start()
        # Named once: otherwise only the time a face takes tells which runtime embeds.
        runtime = type(self.backend).__name__ if self.backend else self.settings.embedder_runtime
        log.info("embedder_runtime", runtime=runtime)

    async def stop(self) -> None:
        if isinstance(self.backend, AsyncEmbeddingBackend):
            await self.backend.close()

    async def _vectors(self, crops: list[Crop]) -> FloatArray:
        if self.asynchronous:
            vectors: FloatArray = await self.embed(crops)
            return vectors
        loop = asyncio.get_running_loop()
        # Split the batch across the executor's workers so every core embeds part of it.
        n = max(1, min(self.settings.workers, len(crops)))
        parts = await asyncio.gather(*(loop.run_in_executor(self.executor, self.embed, crops[j::n]) for j in range(n)))
        vectors = np.zeros((len(crops), parts[0].shape[1]), dtype=np.float32)
        for j, part in enumerate(parts):
            vectors[j::n] = part
        return vectors

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = [Outcome() for _ in records]
        valid: list[tuple[int, dict[str, Any], Crop]] = []
        for i, record in enumerate(records):
            try:
                event = contracts.loads(record.value, "face.detected")
                valid.append((i, event, crop_of(event)))
            except Exception as exc:
                outcomes[i].error = exc
        if not valid:
            return outcomes
        started = time.perf_counter()
        crops = [c for _, _, c in valid]
        vectors = await self._vectors(crops)
        EMBED_BATCH.observe(len(crops))
        INFERENCE_SECONDS.labels("triton" if self.asynchronous else "onnxruntime").observe(
            time.perf_counter() - started
        )
        seconds = (time.perf_counter() - started) / len(crops)
        now = now_iso()
        model = self.model
        for (i, event, _), vector in zip(valid, vectors, strict=True):
            out = carry(event, *FACE_FIELDS, "det_score")
            out.update(
                {
                    "schema_version": 1,
                    "event_type": "face.embedded",
                    "event_id": ids.event_id(
                        "embedding", event["image_id"], event["face_index"], event["image_sha256"]
                    ),
                    "embedding": vector.astype(np.float64).round(7).tolist(),
                    "model": model,
                    "occurred_at": now,
                    "timings": {**event.get("timings", {}), "embedder": round(seconds, 4)},
                }
            )
            outcomes[i].outputs.append(Output("embeddings", event["image_id"], out))
        log.debug("embedded", faces=len(valid), batch=len(records), seconds=round(seconds * len(valid), 4))
        return outcomes
