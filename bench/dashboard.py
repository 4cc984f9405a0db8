"""The Grafana dashboard's panels drawn from a real Prometheus scraping a running pipeline (no
Grafana server runs here): the picture in the README.

A pipeline of four workers (detector, embedder, matcher, notifier+api+audit) on the local broker
streams the demo's probe photos at `--rate` per second for `--minutes`, one in 20 a malformed
event; in the middle the webhook receiver goes away for 30 s (retries wait in their tiers) and
the embedder worker is stopped for 20 s (lag grows in front of it, its scrape fails). The
embedder runs its model in-process here, so the Triton panel has no series. Prometheus
(../shared/bin) scrapes every worker each 2 s and evaluates deploy/prometheus/alerts.yml; at the
end every panel's queries are read over the run and drawn where the dashboard places them.

    .venv/bin/python bench/dashboard.py [--minutes 4] [--rate 2] [--out bench/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _help import Help

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devtools.prometheus import LocalPrometheus
from devtools.workers import terminate
from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline
from tests.test_pipeline_e2e import enrol_gallery, search

WORKERS = [["detector"], ["embedder"], ["matcher"], ["notifier", "api", "audit"]]
PROBES = sorted((SAMPLES / "probes").rglob("*.jpg"))


async def stream(pipeline: Pipeline, minutes: float, rate: float) -> None:
    start = time.monotonic()
    events = int(minutes * 60 * rate)
    receiver_down_at, embedder_down_at = events // 3, events // 2
    for i in range(events):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        if i % 20 == 19:
            await pipeline.submit(f"bad-{i}", b"{not json")
        else:
            path = PROBES[i % len(PROBES)]
            await pipeline.submit(f"p{i}", search(f"p{i}", path, pipeline.settings))
        if i == receiver_down_at:
            print(f"{time.strftime('%H:%M:%S')} receiver away for 30 s", flush=True)
            asyncio.get_running_loop().create_task(receiver_away(pipeline, 30))
        if i == embedder_down_at:
            print(f"{time.strftime('%H:%M:%S')} embedder stopped for 20 s", flush=True)
            asyncio.get_running_loop().create_task(embedder_away(pipeline, 20))


async def receiver_away(pipeline: Pipeline, seconds: float) -> None:
    await pipeline.receiver.stop()
    await asyncio.sleep(seconds)
    await pipeline.receiver.start()  # the same port: the retries find it again


async def embedder_away(pipeline: Pipeline, seconds: float) -> None:
    worker = pipeline.slots[1]
    terminate([worker])
    pipeline.workers.remove(worker)
    await asyncio.sleep(seconds)
    pipeline.spawn_slot(1)


def draw(prometheus: LocalPrometheus, start: float, end: float, out: Path, prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = orjson.loads((ROOT / "deploy/grafana/facestream-dashboard.json").read_bytes())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) // 8
    fig, axes = plt.subplots(rows, 2, figsize=(16, 3.1 * rows), squeeze=False)
    fig.suptitle(f"{dashboard['title']}: Grafana dashboard panels, data from a real Prometheus", fontsize=14)
    step = max(2.0, (end - start) / 300)
    for panel in panels:
        ax = axes[panel["gridPos"]["y"] // 8][panel["gridPos"]["x"] // 12]
        ax.set_title(panel["title"], fontsize=9.5, loc="left")
        for target in panel["targets"]:
            for series in prometheus.query_range(target["expr"], start, end, step):
                xs = [(float(t) - start) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target["legendFormat"], series["metric"], prefix), linewidth=1.4)
        ax.set_xlim(0, (end - start) / 60)
        ax.tick_params(labelsize=8)
        ax.set_ylabel(panel["fieldConfig"]["defaults"].get("unit", ""), fontsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.7)
        else:
            ax.text(0.5, 0.5, "no series in this run", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("minutes into the run", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=72)
    print(f"wrote {out}")


def legend(template: str, labels: dict[str, Any], prefix: str) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", str(value))
    return text.replace(f"{prefix}.", "").replace(f"{prefix}-", "")  # the run's random prefix says nothing


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=2.0, help="searches per second")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "dashboard.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = {"lag_interval_s": 2, "webhook_schedule_s": [0, 2, 5, 10, 20]}
        pipeline = Pipeline(work, [SAMPLES], services=WORKERS, extra=extra)
        await pipeline.start()
        targets = {"-".join(group): f"127.0.0.1:{pipeline.ops_ports['-'.join(group)]}" for group in WORKERS}
        prometheus = LocalPrometheus(work / "prometheus", targets, interval="2s")
        prometheus.start()
        try:
            await enrol_gallery(pipeline)
            start = time.time()
            await stream(pipeline, args.minutes, args.rate)
            await asyncio.sleep(30)  # the last ones delivered, the retries done
            end = time.time()
            firing = [r["name"] for r in prometheus.rules() if r.get("state") == "firing"]
            delivered = len(pipeline.receiver.deliveries)
            print(f"{delivered} webhooks delivered; alerts firing at the end: {firing or 'none'}")
            draw(prometheus, start, end, args.out, pipeline.settings.topic_prefix)
        finally:
            prometheus.stop()
            await pipeline.stop()


if __name__ == "__main__":
    asyncio.run(main())
