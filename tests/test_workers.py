"""devtools/child.py: the workers the tests, the demo and the benchmarks start die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT

PARENT = """
import os, subprocess, sys, time
command = [sys.executable, "-m", "devtools.child", str(os.getpid()), "http.server", "0", "--bind", "127.0.0.1"]
child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # reaped by init once orphaned; a zombie is gone for our purpose
        return stat.read().split(") ")[1][0] != "Z"


def test_a_child_is_stopped_when_its_parent_is_killed() -> None:
    with subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=ROOT) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(1.0)  # the child has started and asked for the signal
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 20
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert not alive(child), "the child outlived its killed parent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
