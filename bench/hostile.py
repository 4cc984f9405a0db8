"""Hostile-input run with counts: a real pipeline takes a long stream of hostile events of every
kind (malformed, bombs, truncated and exotic images, oversized fields, keys and headers,
tombstones, SSRF and traversal URLs) with valid control images among them; prints what became of
each, the worker's memory over the run and whether anything reached the loopback canary.

    .venv/bin/python bench/hostile.py [--events 20000] [--control-every 25]
"""

from __future__ import annotations

import argparse
import sys

from _broker import on_local_broker
from _help import Help

from tests.faults.hostile import hostile_run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Help)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--control-every", type=int, default=25)
    args = p.parse_args()
    counts = on_local_broker(
        lambda workdir: hostile_run(workdir, args.events, args.control_every, limit_s=3600), "facestream-hostile-"
    )
    if counts is None:
        return 1
    print(counts.table())
    for line in counts.wrong_reason[:20]:
        print("unexpected reason:", line)
    clean = not counts.not_dead_lettered and not counts.wrong_reason and counts.canary_connections == 0
    return 0 if clean and counts.control_results == counts.controls and counts.worker_restarts == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
