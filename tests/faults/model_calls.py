"""Functions the model-process tests run inside model processes (importable by spawned children)."""

from __future__ import annotations

import os
from pathlib import Path


def pid() -> int:
    return os.getpid()


def die_once(marker: str) -> int:
    """Kill this process the first time (as the OOM killer would), answer the second time."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(137)
    return os.getpid()


def always_die() -> int:
    os._exit(137)


def nothing() -> None:
    """A model loader that loads nothing."""
