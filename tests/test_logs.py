"""Logs are JSON lines, the libraries' too, and a line repeated in a burst (a broker away: a
reconnection error every few milliseconds) is written once per window with a count."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx

from facestream.ops.logs import Repeats
from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline

SCRIPT = """
import logging
from facestream.ops.logs import configure, get_logger
configure("INFO", service="test")
conn = logging.getLogger("aiokafka.conn")
for _ in range(5000):
    conn.error("Unable connect to %r", "127.0.0.1:9092")
logging.getLogger("faust").warning("a faust warning")
get_logger("facestream").info("ours", image_id="img-1")
"""


def test_library_lines_are_json_and_bursts_are_collapsed() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is one JSON object
    errors = [x for x in lines if x.get("logger") == "aiokafka.conn"]
    assert len(errors) == 1  # 5,000 in a burst: the first is written, the rest held back
    assert errors[0]["level"] == "error"
    assert errors[0]["service"] == "test"
    assert [x["event"] for x in lines if x["event"] in {"a faust warning", "ours"}] == ["a faust warning", "ours"]


def test_the_next_line_after_the_window_counts_the_ones_held_back() -> None:
    repeats = Repeats(window_s=0.0)
    record = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "Unable connect to %r", ("x",), None)
    assert repeats.filter(record)
    held = Repeats(window_s=3600)
    assert held.filter(record)
    assert not held.filter(record)
    assert not held.filter(record)
    held.window_s = 0.0
    later = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "Unable connect to %r", ("x",), None)
    assert held.filter(later)
    assert later.repeats_held == 2


async def test_a_clean_start_and_stop_log_json_and_no_errors(kafka: str, tmp_path: Path) -> None:
    """A worker started, made ready and stopped with SIGTERM writes only JSON lines, none at
    error level, and every stage says it stopped (clients closed, nothing left 'unclosed')."""
    pipeline = Pipeline(tmp_path, [SAMPLES])
    await pipeline.start()
    try:
        url = f"http://127.0.0.1:{pipeline.ops_ports['all']}/readyz"

        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
                try:
                    return (await http.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

        await pipeline.wait_for(ready, what="the worker to be ready")
    finally:
        await pipeline.stop()
    assert all(w.returncode == 0 for w in pipeline.workers), [w.returncode for w in pipeline.workers]
    lines = [line for line in pipeline.logs(limit=None).splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line[:300]}") from None
    bad = [x for x in parsed if x.get("level") in {"error", "critical"}]
    assert not bad, bad[:5]
    stopped = {x.get("stage") for x in parsed if x.get("event") == "stage_stopped"}
    assert stopped == {"detector", "embedder", "matcher", "notifier"}
