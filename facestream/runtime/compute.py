"""The worker's model processes.

Detection and embedding are CPU-bound and partly Python (pre- and post-processing), so running
them in threads of the faust process would serialise much of it on one GIL. A small pool of
processes (one per core, models loaded once by the initializer) does the model work, while the
faust process keeps to Kafka, JSON and HTTP. In-process threads remain available
(`model_processes = 0`), e.g. where processes cannot be forked.

A model process can die (the kernel's OOM killer, a crashing native decoder). Python's process
pool is then broken for good; `ModelPool` replaces it and sends the calls that were in flight
again, a bounded number of times (a call that kills every process it runs in is refused in the
end, with `ModelProcessDied`). Model processes die with the worker that started them, even when
it is killed with SIGKILL, so they never outlive it holding their memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

from facestream.config import Settings
from facestream.errors import ModelProcessDied
from facestream.ops.logs import get_logger
from facestream.ops.metrics import MODEL_POOL_RESTARTS
from facestream.runtime.service import ModelLoader, Service

log = get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGKILL to this process when the thread that forked it exits, which
    # for the pool is the worker's event loop thread, i.e. when the worker dies.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the line above ran
            os._exit(1)


def _warm(loaders: Sequence[ModelLoader]) -> None:
    _die_with_parent()
    # Model processes must not compete with each other for cores inside ONNX Runtime.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for load in loaders:
        load()


class ModelPool(Executor):
    """A process pool that replaces itself when a process dies, and retries the calls in flight.

    `submit` must be called from the event loop's thread (as `loop.run_in_executor` does): new
    processes are started from that thread, which lives as long as the worker."""

    def __init__(self, processes: int, loaders: Sequence[ModelLoader], retries: int = 2) -> None:
        self.processes = processes
        self.loaders = list(loaders)
        self.retries = retries
        self.restarts = 0
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_warm,
            initargs=(self.loaders,),
        )

    @property
    def ready(self) -> bool:
        """False while the pool is broken and not yet replaced."""
        return not getattr(self._pool, "_broken", False)

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                self.restarts += 1
                MODEL_POOL_RESTARTS.inc()
                log.error("model_process_died", restarts=self.restarts)
            return self._pool

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with contextlib.suppress(RuntimeError):  # not called from a loop: retries start from the pool's thread
            self._loop = asyncio.get_running_loop()
        outer: Future[T] = Future()
        self._start(outer, fn, args, kwargs, self.retries)
        return outer

    def _start(self, outer: Future[T], fn: Callable[..., T], args: Any, kwargs: Any, retries: int) -> None:
        pool = self._pool
        try:
            inner = pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            pool = self._replace(pool)
            inner = pool.submit(fn, *args, **kwargs)
        except Exception as exc:
            outer.set_exception(exc)
            return

        def done(future: Future[T]) -> None:
            error = future.exception() if not future.cancelled() else None
            if isinstance(error, BrokenProcessPool):
                self._replace(pool)
                if retries <= 0:
                    outer.set_exception(ModelProcessDied("the model process died on this call, again and again"))
                    return
                # Start the call again from the loop's thread, not from the pool's thread that
                # reports the death (processes started from a short-lived thread would die with it).
                again = functools.partial(self._start, outer, fn, args, kwargs, retries - 1)
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(again)
                else:
                    again()
            elif future.cancelled():
                outer.cancel()
            elif error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(future.result())

        inner.add_done_callback(done)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def model_executor(settings: Settings, services: Sequence[Service]) -> Executor:
    """A process pool with the models of `services` loaded, or threads if processes are off or
    no service needs a local model."""
    loaders = [loader for s in services if (loader := s.model_loader(settings)) is not None]
    if settings.model_processes <= 0 or not loaders:
        return ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="facestream-model")
    return ModelPool(settings.model_processes, loaders)
