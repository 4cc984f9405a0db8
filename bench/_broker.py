"""Shared by the fault benchmarks: run a coroutine in a fresh folder on the local broker (started
for the run, and stopped after it, when it was not running already)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fault runs live in tests/faults

from facestream.config import load_settings  # noqa: E402
from facestream.io.broker import local_broker  # noqa: E402

T = TypeVar("T")


def on_local_broker(run: Callable[[Path], Awaitable[T]], prefix: str) -> T | None:
    """`run(folder)`'s result; None when the broker cannot be started."""
    settings = load_settings()
    started = local_broker("status", settings) != 0
    if started and local_broker("up", settings) != 0:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
            return asyncio.run(run(Path(workdir)))
    finally:
        if started:
            local_broker("down", settings)
