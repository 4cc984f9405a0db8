"""The worker's model processes.

Detection and embedding are CPU-bound and partly Python (pre- and post-processing), so running
them in threads of the faust process would serialise much of it on one GIL. A small pool of
processes (one per core, models loaded once by the initializer) does the model work, while the
faust process keeps to Kafka, JSON and HTTP. In-process threads remain available
(`model_processes = 0`), e.g. where processes cannot be forked.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from facestream.config import Settings


def _warm(services: tuple[str, ...], det_threshold: float) -> None:
    # Model processes must not compete with each other for cores inside ONNX Runtime.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "detector" in services:
        from services.detector.logic import detector_for

        detector_for(det_threshold)
    if "embedder" in services:
        from services.embedder.logic import default_backend

        default_backend()


def model_executor(settings: Settings, services: Iterable[str]) -> Executor:
    """A process pool with the models of `services` loaded, or threads if processes are off."""
    local_embedder = not settings.triton_url
    needed = tuple(s for s in services if s == "detector" or (s == "embedder" and local_embedder))
    if settings.model_processes <= 0 or not needed:
        return ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="facestream-model")
    return ProcessPoolExecutor(
        max_workers=settings.model_processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_warm,
        initargs=(needed, min(0.5, settings.det_score_threshold)),
    )
