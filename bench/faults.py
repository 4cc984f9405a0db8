"""Fault run with counts: a real pipeline takes a stream of searches while its workers or their
model processes are killed with SIGKILL at random moments, the webhook receiver is away for a
while and the broker restarts; then every image and every match is accounted for and the counts
are printed.

    .venv/bin/python bench/faults.py [--images 600] [--kills 6] [--receiver-down 60] [--broker-restart]
                                     [--workers 3] [--model-kills 4]
"""

from __future__ import annotations

import argparse
import sys

from _broker import on_local_broker

from tests.faults.run import fault_run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--receiver-down", type=float, default=60.0, help="seconds the receiver is away (0: never)")
    p.add_argument("--broker-restart", action="store_true", help="restart the broker once, mid-stream")
    p.add_argument(
        "--workers", type=int, default=1, help="detector+embedder workers in one group (>1: a kill kills one of them)"
    )
    p.add_argument("--model-kills", type=int, default=0, help="SIGKILLs of a model process")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    counts = on_local_broker(
        lambda workdir: fault_run(
            workdir,
            args.images,
            args.kills,
            receiver_down_s=args.receiver_down,
            broker_restart=args.broker_restart,
            workers=args.workers,
            model_kills=args.model_kills,
            seed=args.seed,
            limit_s=1800,
        ),
        "facestream-faults-",
    )
    if counts is None:
        return 1
    print(counts.table())
    return 0 if counts.lost_images == 0 and counts.lost_webhooks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
