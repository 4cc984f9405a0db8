"""Running services as a faust worker (all four in one process, or any subset)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import faust

from facestream.app import SERVICES, create_app
from facestream.compute import model_executor
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
    executor = model_executor(settings, services)
    app = create_app(settings, services, executor=executor)
    # faust creates only the last level of its data directory.
    os.makedirs(settings.data_dir / "faust", exist_ok=True)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    # faust's terminal spinner sets the root logger to DEBUG (to spin on every record), which
    # makes every library debug call format a record: a measurable cost on the hot path.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def spawn(
    config: Path, services: Sequence[str] = (), log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `facestream run` as a separate worker process with settings file `config`."""
    args = [a for name in services for a in ("--service", name)]
    env = {**os.environ, **(env or {}), "FACESTREAM_CONFIG": str(config)}
    command = [sys.executable, "-m", "facestream.cli", "run", *args]
    if log is None:
        return subprocess.Popen(command, env=env, cwd=ROOT)
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def terminate(workers: Sequence[subprocess.Popen[bytes]], grace_s: float = 30) -> None:
    """SIGTERM (faust stops gracefully and commits), then SIGKILL after `grace_s`."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(grace_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
