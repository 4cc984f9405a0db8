"""Worker processes for the demo, the tests and the benchmarks: `facestream run` in a child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn(
    config: Path, services: Sequence[str] = (), log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `facestream run` as a separate worker process with settings file `config`; it is
    stopped (SIGTERM) if this process dies first (devtools/child.py)."""
    args = [a for name in services for a in ("--service", name)]
    env = {**os.environ, **(env or {}), "FACESTREAM_CONFIG": str(config)}
    command = [sys.executable, "-m", "devtools.child", str(os.getpid()), "facestream.services", "run", *args]
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
