"""`python -m devtools.child PARENT_PID MODULE [ARGS...]`: `python -m MODULE ARGS...` in a process
that is sent SIGTERM when the process that started it dies (Linux's parent-death signal), so a
test run or a demo that is killed leaves no workers behind, burning the cores and holding the
broker's partitions. Elsewhere it simply runs MODULE.

The signal is asked for here, in the child, rather than in a `preexec_fn` (not safe in a process
with threads, which the test harness is). It follows the thread that started the child: start
children from a thread that lives as long as they should (the main one, or the event loop's).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main() -> int:
    parent, module, *args = sys.argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            print(f"devtools.child: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        if os.getppid() != int(parent):  # the parent died before the signal was asked for
            return 1
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
