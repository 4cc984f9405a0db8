"""The short fault runs of the suite (see tests/faults/run.py): searches stream in while faults
land at random moments. Nothing may be lost, no gallery point doubled; every match reaches the
receiver. `bench/faults.py` runs longer ones."""

from __future__ import annotations

from pathlib import Path

from tests.faults.run import GALLERY, Counts, fault_run
from tests.figures import report_figure


def _nothing_lost(counts: Counts) -> None:
    assert counts.lost_images == 0
    assert counts.results + counts.dead_letters == counts.submitted
    assert counts.dead_letters == 0  # nothing in these photos is refusable
    assert counts.expected_webhooks > 0
    assert counts.lost_webhooks == 0
    assert counts.gallery_sizes == {len(GALLERY)}  # redelivered enrolments made no second point
    assert counts.wrong_answers == 0
    assert counts.lag == 0


async def test_kills_and_a_receiver_outage_lose_nothing(kafka: str, tmp_path: Path) -> None:
    counts = await fault_run(tmp_path, images=60, kills=2, receiver_down_s=3.0, seed=11, limit_s=120, rate=5.0)
    report_figure("fault run (60 searches at 5/s, 2 SIGKILLs, receiver away 3 s):\n" + counts.table())
    assert counts.kills == 2
    _nothing_lost(counts)


async def test_one_of_three_workers_killed_loses_nothing(kafka: str, tmp_path: Path) -> None:
    """Three workers share the detector and embedder group; one at a time is SIGKILLed, the two
    others take its partitions over (a rebalance), then it comes back (another)."""
    counts = await fault_run(tmp_path, images=60, kills=2, seed=5, limit_s=180, rate=4.0, workers=3)
    report_figure(
        "fault run (60 searches at 4/s, 3 detector+embedder workers, one SIGKILLed twice):\n" + counts.table()
    )
    assert counts.kills == 2
    _nothing_lost(counts)


async def test_model_process_kills_and_a_broker_restart_lose_nothing(kafka: str, tmp_path: Path) -> None:
    """The worker stays up while two of its model processes are SIGKILLed and the broker
    restarts under it."""
    counts = await fault_run(
        tmp_path, images=60, kills=0, model_kills=2, broker_restart=True, seed=3, limit_s=180, rate=4.0
    )
    report_figure("fault run (60 searches at 4/s, 2 model processes SIGKILLed, broker restart):\n" + counts.table())
    assert counts.model_kills == 2
    assert counts.broker_restarts == 1
    _nothing_lost(counts)
