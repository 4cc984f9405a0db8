"""Fault run with counts: a real pipeline takes a stream of searches while its worker is killed
with SIGKILL at random moments, the webhook receiver is away for a while and the broker restarts;
then every image and every match is accounted for and the counts are printed.

    .venv/bin/python bench/faults.py [--images 600] [--kills 6] [--receiver-down 60] [--broker-restart]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facestream.config import load_settings  # noqa: E402
from facestream.io.broker import local_broker  # noqa: E402
from tests.faults.run import fault_run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--receiver-down", type=float, default=60.0, help="seconds the receiver is away (0: never)")
    p.add_argument("--broker-restart", action="store_true", help="restart the broker at the first kill")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    settings = load_settings()
    started = local_broker("status", settings) != 0
    if started and local_broker("up", settings) != 0:
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="facestream-faults-") as workdir:
            counts = asyncio.run(
                fault_run(
                    Path(workdir),
                    args.images,
                    args.kills,
                    receiver_down_s=args.receiver_down,
                    broker_restart=args.broker_restart,
                    seed=args.seed,
                    limit_s=1800,
                )
            )
    finally:
        if started:
            local_broker("down", settings)
    print(counts.table())
    return 0 if counts.lost_images == 0 and counts.lost_webhooks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
