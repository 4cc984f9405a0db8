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
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from facestream.config import Settings
from facestream.runtime.service import ModelLoader, Service


def _warm(loaders: Sequence[ModelLoader]) -> None:
    # Model processes must not compete with each other for cores inside ONNX Runtime.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for load in loaders:
        load()


def model_executor(settings: Settings, services: Sequence[Service]) -> Executor:
    """A process pool with the models of `services` loaded, or threads if processes are off or
    no service needs a local model."""
    loaders = [loader for s in services if (loader := s.model_loader(settings)) is not None]
    if settings.model_processes <= 0 or not loaders:
        return ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="facestream-model")
    return ProcessPoolExecutor(
        max_workers=settings.model_processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_warm,
        initargs=(loaders,),
    )
