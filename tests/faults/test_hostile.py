"""The hostile-input run of the suite (see tests/faults/hostile.py): 2,000 hostile events of
every kind, with valid control images among them, through a real broker and worker."""

from __future__ import annotations

from pathlib import Path

from tests.faults.hostile import hostile_run
from tests.figures import report_figure


async def test_hostile_input_is_dead_lettered_and_takes_nothing_with_it(kafka: str, tmp_path: Path) -> None:
    counts = await hostile_run(tmp_path, events=2000, control_every=25, limit_s=400)
    report_figure("hostile-input run (2,000 hostile events, a control image every 25th):\n" + counts.table())
    assert counts.hostile == 2000
    assert counts.not_dead_lettered == []
    assert counts.wrong_reason == [], "\n".join(sorted({w.split(" (")[0] for w in counts.wrong_reason}))
    assert counts.dead_lettered == counts.hostile
    assert counts.control_results == counts.controls == 80
    assert counts.matches > 0
    assert counts.webhooks == counts.matches
    assert counts.canary_connections == 0
    assert counts.worker_restarts == 0
    # Bounded: no bomb was expanded, nothing piled up (the model processes' own growth included).
    assert counts.rss_peak_mb - counts.rss_start_mb < 450, counts.table()
