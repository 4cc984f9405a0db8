"""Running services as a faust worker (all four in one process, or any subset)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import faust

from facestream.app import SERVICES, create_app
from facestream.config import Settings
from facestream.kafka import ensure_topics
from facestream.logs import configure

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"


def kafka(command: str) -> int:
    """`scripts/kafka.sh up|down|status|fetch` (the local single-node broker)."""
    return subprocess.call(["bash", str(KAFKA_SCRIPT), command])


def run(settings: Settings, services: Sequence[str] = SERVICES, loglevel: str = "INFO") -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM)."""
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise SystemExit(f"unknown service(s): {', '.join(sorted(unknown))}; choose from {', '.join(SERVICES)}")
    configure(loglevel, service="+".join(services))
    asyncio.run(ensure_topics(settings))
    app = create_app(settings, services)
    # faust creates only the last level of its data directory.
    os.makedirs(settings.data_dir / "faust", exist_ok=True)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
