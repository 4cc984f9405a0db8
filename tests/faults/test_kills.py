"""The short fault run of the suite: searches stream in while the worker is SIGKILLed twice at
random moments and the webhook receiver is away for a few seconds. Nothing may be lost, no
gallery point doubled; every match reaches the receiver. `bench/faults.py` runs longer ones,
with a broker restart."""

from __future__ import annotations

from pathlib import Path

from tests.faults.run import GALLERY, fault_run
from tests.figures import report_figure


async def test_kills_and_a_receiver_outage_lose_nothing(kafka: str, tmp_path: Path) -> None:
    counts = await fault_run(tmp_path, images=60, kills=2, receiver_down_s=3.0, seed=11, limit_s=120, rate=5.0)
    report_figure("fault run (60 searches at 5/s, 2 SIGKILLs, receiver away 3 s):\n" + counts.table())
    assert counts.kills == 2
    assert counts.lost_images == 0
    assert counts.results + counts.dead_letters == counts.submitted
    assert counts.dead_letters == 0  # nothing in these photos is refusable
    assert counts.expected_webhooks > 0
    assert counts.lost_webhooks == 0
    assert counts.gallery_sizes == {len(GALLERY)}  # redelivered enrolments made no second point
