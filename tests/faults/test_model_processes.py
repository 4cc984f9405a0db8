"""Model processes: one that dies is replaced and the calls in flight are sent again (a call that
kills every process it gets is refused in the end); readiness says so while the pool is broken;
and model processes die with their worker, even when it is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facestream.errors import ModelProcessDied
from facestream.runtime.compute import ModelPool
from tests.conftest import ROOT
from tests.faults import model_calls


async def test_a_dead_model_process_is_replaced_and_its_call_sent_again(tmp_path: Path) -> None:
    pool = ModelPool(2, [model_calls.nothing])
    loop = asyncio.get_running_loop()
    try:
        first = await loop.run_in_executor(pool, model_calls.pid)
        survivor = await loop.run_in_executor(pool, model_calls.die_once, str(tmp_path / "died"))
        assert survivor != first
        assert pool.restarts == 1
        assert pool.ready
        # Everything else runs as before on the new processes.
        assert len({await loop.run_in_executor(pool, model_calls.pid) for _ in range(4)}) >= 1
    finally:
        pool.shutdown()


async def test_a_call_that_kills_every_process_is_refused() -> None:
    pool = ModelPool(1, [model_calls.nothing], retries=2)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(ModelProcessDied):
            await loop.run_in_executor(pool, model_calls.always_die)
        assert pool.restarts == 3  # the first death and two retries
        assert isinstance(await loop.run_in_executor(pool, model_calls.pid), int)
        assert pool.ready
    finally:
        pool.shutdown()


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_model_processes_die_with_a_killed_worker() -> None:
    script = (
        "import asyncio, sys\n"
        "from facestream.runtime.compute import ModelPool\n"
        "from tests.faults import model_calls\n"
        "async def main():\n"
        "    pool = ModelPool(2, [model_calls.nothing])\n"
        "    loop = asyncio.get_running_loop()\n"
        "    await asyncio.gather(*(loop.run_in_executor(pool, model_calls.pid) for _ in range(4)))\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        # The pool's processes and multiprocessing's resource tracker.
        children = _children(worker.pid)
        assert len(children) >= 3, children
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.2)
        assert not [p for p in children if _alive(p)], "model processes outlived their worker"
    finally:
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
