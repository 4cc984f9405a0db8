"""Server processes the tests and benchmarks start: waiting for one to answer, stopping it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_http(
    process: subprocess.Popen[bytes] | None, url: str, limit_s: float, what: str, log: Callable[[], str]
) -> None:
    """Until `url` answers 200; RuntimeError (with the end of its log) when the process exits
    first or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} at {url} not ready within {limit_s} s:\n{log()}")


def stop(process: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited after `grace_s`."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
