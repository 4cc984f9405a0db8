"""What operators see: metrics that move, lag that grows while a stage is stopped and drains
when it resumes, health endpoints, and the `lag` and `status` commands. Real broker, real
workers (one per service), real HTTP."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devtools.workers import terminate
from facestream.ops.lag import consumer_lag
from tests.conftest import SAMPLES
from tests.harness import Pipeline
from tests.test_cli import cli
from tests.test_pipeline_e2e import enrol_gallery, search

SEPARATE = [["detector"], ["embedder"], ["matcher"], ["notifier"]]


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_metrics_lag_and_health(kafka: str, tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, [SAMPLES], services=SEPARATE, extra={"lag_interval_s": 1})
    await pipeline.start()
    http = httpx.AsyncClient(timeout=5)
    ops = {name: f"http://127.0.0.1:{port}" for name, port in pipeline.ops_ports.items()}

    async def get(service: str, path: str) -> httpx.Response:
        return await http.get(ops[service] + path)

    async def all_ready() -> bool:
        try:
            codes = [(await get(s, "/readyz")).status_code for s in ops]
        except httpx.HTTPError:
            return False
        return all(code == 200 for code in codes)

    try:
        await pipeline.wait_for(all_ready, what="every worker ready")
        assert (await get("detector", "/healthz")).json() == {"status": "alive"}
        ready = (await get("matcher", "/readyz")).json()
        assert ready == {"ready": True, "components": {"kafka": True, "matcher": True}}

        await enrol_gallery(pipeline)
        probes = sorted((SAMPLES / "probes" / "azure_family2_man").glob("*.jpg"))
        # Stop the embedder: faces pile up in front of it.
        embedder = pipeline.workers[1]
        terminate([embedder])
        pipeline.workers.remove(embedder)
        for i, path in enumerate(probes * 3):
            await pipeline.submit(f"lag-{i}", search(f"lag-{i}", path, pipeline.settings))
        group = f"{pipeline.settings.app_id}-embedder"

        async def embedder_lag() -> int:
            rows = await consumer_lag(pipeline.settings, {group: [pipeline.settings.topic("faces")]})
            return sum(r.lag for r in rows)

        await pipeline.wait_for(lambda: _at_least(embedder_lag, 6), what="lag in front of the stopped embedder")
        lag_table = await cli(pipeline.config, "lag")
        assert group in lag_table
        assert "faces" in lag_table
        # Resume it: the lag drains to zero and the webhooks arrive.
        pipeline.spawn_worker(["embedder"])
        await pipeline.wait_for(lambda: _equals(embedder_lag, 0), what="the lag to drain")
        await pipeline.wait_for(lambda: len(pipeline.receiver.deliveries) >= 6, what="webhooks after resuming")

        detector = (await get("detector", "/metrics")).text
        assert metric(detector, "facestream_events_consumed_total", stage="detector") >= 6 + 5
        assert metric(detector, "facestream_events_produced_total", stage="detector", topic="faces") >= 6 + 5
        assert metric(detector, "facestream_stage_seconds_count", stage="detector") >= 11
        embedder_metrics = (await get("embedder", "/metrics")).text
        assert metric(embedder_metrics, "facestream_embedder_batch_size_count") >= 1
        assert metric(embedder_metrics, "facestream_inference_seconds_count", backend="onnxruntime") >= 1
        matcher = (await get("matcher", "/metrics")).text
        assert metric(matcher, "facestream_gallery_search_seconds_count") >= 6
        notifier = (await get("notifier", "/metrics")).text
        assert metric(notifier, "facestream_webhook_deliveries_total", status_class="2xx") >= 6
        assert metric(notifier, "facestream_end_to_end_seconds_count") >= 6
        assert metric(notifier, "facestream_webhook_delivery_seconds_count") >= 6
        assert metric(notifier, "facestream_webhook_outcomes_total", outcome="delivered") >= 6
        # Lag per group, topic and partition, exported by each worker.
        detector_lag = (await get("detector", "/metrics")).text
        assert "facestream_consumer_lag" in detector_lag
        status = (await get("detector", "/api/status")).json()
        assert status["stages"]["detector"]["consumed"] >= 11
        assert {row["topic"] for row in status["lag"]} == {pipeline.settings.topic("images")}
        summary = await cli(pipeline.config, "status", "--window", "1")
        assert pipeline.settings.topic("faces") in summary
        assert "dead letters" in summary
        delivered = re.search(r"test-receiver: delivered\s+(\d+)", summary)
        assert delivered is not None
        assert int(delivered.group(1)) >= 6
    finally:
        await http.aclose()
        await pipeline.stop()


async def _at_least(value: object, threshold: int) -> bool:
    return await value() >= threshold  # type: ignore[operator,no-any-return]


async def _equals(value: object, expected: int) -> bool:
    return await value() == expected  # type: ignore[operator,no-any-return]
