"""The pipeline on real clusters, all on loopback: three Kafka nodes (KRaft, topics with
replication factor 3 and min.insync.replicas 2, producers with acks=all and idempotence) and three
Qdrant peers in distributed mode (the gallery collection in 3 shards, each on 2 peers). A stream of
searches runs while one Kafka node and then one Qdrant peer are SIGKILLed and brought back: no
image or webhook lost, no webhook id sent twice, every answer right, an enrolment made while the
peer was down applied and found, the peer back with every replica active, and the lag drained.
`bench/faults.py --clusters` runs longer ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.kafka_nodes import KafkaNodes
from devtools.qdrant import QdrantCluster, qdrant_binary
from tests.faults.run import GALLERY, Clusters, fault_run
from tests.figures import report_figure


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    if qdrant_binary() is None:
        pytest.skip("no Qdrant server binary here: ../shared/bin/qdrant.xz is absent and PATH has no `qdrant`")
    folder = tmp_path_factory.mktemp("clusters")
    kafka = KafkaNodes(folder / "kafka", 3)
    qdrant = QdrantCluster(folder / "qdrant", 3)
    try:
        kafka.start()
        qdrant.start()
        yield Clusters(kafka, qdrant)
    finally:
        qdrant.stop()
        kafka.stop()


async def test_a_kafka_node_and_a_qdrant_peer_killed_lose_nothing(clusters: Clusters, tmp_path: Path) -> None:
    counts = await fault_run(
        tmp_path, images=60, kills=0, clusters=clusters, node_kills=1, peer_kills=1, seed=2, limit_s=180, rate=4.0
    )
    report_figure(
        "cluster fault run (60 searches at 4/s, 1 of 3 Kafka nodes and 1 of 3 Qdrant peers SIGKILLed):\n"
        + counts.table()
    )
    assert (counts.node_kills, counts.peer_kills) == (1, 1)
    assert counts.searched_while_node_down > 0, "the stream went on while a Kafka node was down"
    assert counts.unanswered_while_node_down == 0, "searches waited for the killed node (one replica?)"
    assert counts.lost_images == 0
    assert counts.results == counts.submitted
    assert counts.lost_webhooks == 0
    assert counts.duplicates == 0, "a webhook id was sent twice"
    assert counts.wrong_answers == 0
    assert counts.late_enrolled, "the enrolment made while a peer was down was not applied or not found"
    assert counts.gallery_sizes <= {len(GALLERY), len(GALLERY) + 1}  # no point doubled
    assert counts.rejoined, "the restarted peer did not catch up"
    assert counts.lag == 0
