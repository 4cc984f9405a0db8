"""Fault run with counts: a real pipeline takes a stream of searches while its workers or their
model processes are killed with SIGKILL at random moments, the webhook receiver is away for a
while and the broker restarts; then every image and every match is accounted for and the counts
are printed.

    .venv/bin/python bench/faults.py [--images 600] [--kills 6] [--receiver-down 60] [--broker-restart]
                                     [--workers 3] [--model-kills 4]
    .venv/bin/python bench/faults.py --clusters [--node-kills 3] [--peer-kills 2] [--images 600] [--kills 0]
        (on three Kafka nodes and three Qdrant peers started for the run: those are SIGKILLed too)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from _broker import on_local_broker
from _help import Help

from devtools.kafka_nodes import KafkaNodes
from devtools.qdrant import QdrantCluster
from tests.faults.run import Clusters, Counts, fault_run


def run(workdir: Path, args: argparse.Namespace, clusters: Clusters | None = None) -> Coroutine[Any, Any, Counts]:
    return fault_run(
        workdir,
        args.images,
        args.kills,
        receiver_down_s=args.receiver_down,
        broker_restart=args.broker_restart and clusters is None,
        workers=args.workers,
        model_kills=args.model_kills,
        seed=args.seed,
        limit_s=1800,
        clusters=clusters,
        node_kills=args.node_kills if clusters else 0,
        peer_kills=args.peer_kills if clusters else 0,
    )


def on_clusters(args: argparse.Namespace) -> Counts:
    folder = Path(tempfile.mkdtemp(prefix="facestream-faults-clusters-"))
    kafka = KafkaNodes(folder / "kafka", 3).start()
    qdrant = QdrantCluster(folder / "qdrant", 3).start()
    try:
        return asyncio.run(run(folder / "run", args, Clusters(kafka, qdrant)))
    finally:
        qdrant.stop()
        kafka.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Help)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--receiver-down", type=float, default=60.0, help="seconds the receiver is away (0: never)")
    p.add_argument("--broker-restart", action="store_true", help="restart the broker once, mid-stream")
    p.add_argument(
        "--workers", type=int, default=1, help="detector+embedder workers in one group (>1: a kill kills one of them)"
    )
    p.add_argument("--model-kills", type=int, default=0, help="SIGKILLs of a model process")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--clusters", action="store_true", help="run on 3 Kafka nodes and 3 Qdrant peers")
    p.add_argument("--node-kills", type=int, default=3, help="--clusters: SIGKILLs of a Kafka node")
    p.add_argument("--peer-kills", type=int, default=2, help="--clusters: SIGKILLs of a Qdrant peer")
    args = p.parse_args()
    counts = on_clusters(args) if args.clusters else on_local_broker(lambda w: run(w, args), "facestream-faults-")
    if counts is None:
        return 1
    print(counts.table())
    return 0 if counts.lost_images == 0 and counts.lost_webhooks == 0 and counts.wrong_answers == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
