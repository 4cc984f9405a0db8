"""The embedder's Triton backend against a real `tritonserver` (from nvidia-pytriton, CPU,
python backend serving the same prepared SFace file with ONNX Runtime)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc.aio as triton
import yaml
from prometheus_client import REGISTRY

from devtools.binaries import binary
from devtools.localtriton import LocalTritonServer, build_repository
from devtools.prometheus import LocalPrometheus
from facestream import contracts
from facestream.config import Settings
from facestream.errors import ModelError
from facestream.runtime.stage import Record
from facestream.services.detector.logic import FaceDetector, align
from facestream.services.embedder.logic import OnnxRuntimeBackend
from facestream.services.embedder.stage import EmbedderStage
from facestream.services.embedder.triton import TritonBackend
from tests.conftest import MODEL, ROOT, SAMPLES, read
from tests.figures import report_figure
from tests.harness import Pipeline
from tests.helpers import face_detected

TOLERANCE = 1e-5  # max abs difference of L2-normalised embeddings, Triton vs in-process


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTritonServer]:
    work = tmp_path_factory.mktemp("triton")
    server = LocalTritonServer(build_repository(work / "repository", MODEL), work)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def crops(detector: FaceDetector) -> list[np.ndarray]:
    out = []
    for path in sorted(SAMPLES.rglob("*.jpg")):
        image = read(path)
        out += [align(image, face) for face in detector.detect(image)]
    return out


async def test_embeddings_equal_the_in_process_ones(triton_server: LocalTritonServer, crops: list[np.ndarray]) -> None:
    backend = TritonBackend(triton_server.url)
    await backend.start()
    try:
        remote = await backend.embed(crops)
    finally:
        await backend.close()
    local = OnnxRuntimeBackend(MODEL).embed(crops)
    difference = float(np.abs(remote - local).max())
    report_figure(f"triton vs in-process embeddings: max abs difference {difference:.2e} over {len(crops)} faces")
    assert remote.shape == (len(crops), 128)
    assert difference <= TOLERANCE
    assert backend.model_version == "2021dec"


async def test_the_dynamic_batcher_forms_batches(triton_server: LocalTritonServer, crops: list[np.ndarray]) -> None:
    backend = TritonBackend(triton_server.url, max_in_flight=64)
    await backend.start()
    client = triton.InferenceServerClient(triton_server.url)
    try:
        before = (await client.get_inference_statistics("sface", as_json=True))["model_stats"][0]
        singles = [crops[i % len(crops)] for i in range(64)]
        await asyncio.gather(*(backend.embed([c]) for c in singles))
        # The server counts an execution after it has answered: the last ones may show a moment late.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            after = (await client.get_inference_statistics("sface", as_json=True))["model_stats"][0]
            done = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
            if done >= 64 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await backend.close()
        await client.close()
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    report_figure(f"triton dynamic batcher: {inferences} inferences in {executions} executions")
    assert inferences == 64
    assert executions < inferences


async def test_a_wrong_model_is_refused_at_start_up(triton_server: LocalTritonServer) -> None:
    with pytest.raises(ModelError, match=r"input data shape \[3, 96, 96\], expected \[3, 112, 112\]"):
        await TritonBackend(triton_server.url, "sface_wrong").start()
    with pytest.raises(ModelError, match=r"not ready|not found"):
        await TritonBackend(triton_server.url, "no_such_model").start()
    with pytest.raises(ModelError):
        await TritonBackend("127.0.0.1:9", timeout_s=1).start()


def face_event(image_id: str, crop: np.ndarray) -> bytes:
    return contracts.dumps(face_detected(image_id, crop))


async def test_server_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, crops: list[np.ndarray]) -> None:
    server = LocalTritonServer(build_repository(tmp_path / "repository", MODEL, wrong_model=False), tmp_path)
    server.start()
    backend = TritonBackend(server.url, timeout_s=2, retry_for_s=120)
    stage = EmbedderStage(Settings(), backend)
    await stage.start()
    try:
        batches = [
            [
                Record(face_event(f"img-{b}-{i}", crops[(b + i) % len(crops)]), b"k", "faces", 0, b * 8 + i)
                for i in range(8)
            ]
            for b in range(6)
        ]
        first = await stage.process(batches[0])
        server.kill()
        pending = asyncio.gather(*(stage.process(batch) for batch in batches[1:]))
        await asyncio.sleep(2)
        assert not pending.done(), "the stage waits for the server instead of failing the batch"
        server.start()  # same ports: the channel reconnects
        rest = await asyncio.wait_for(pending, 120)
    finally:
        await stage.stop()
        server.stop()
    outcomes = [*first, *(o for batch in rest for o in batch)]
    assert all(o.error is None and len(o.outputs) == 1 for o in outcomes)
    ids_out = [o.outputs[0].value["event_id"] for o in outcomes]
    assert len(ids_out) == len(set(ids_out)) == 48
    assert backend.unavailable_retries > 0
    retried = REGISTRY.get_sample_value("facestream_triton_unavailable_retries_total", {"url": server.url})
    assert retried == backend.unavailable_retries
    assert REGISTRY.get_sample_value("facestream_triton_up", {"url": server.url}) == 1  # back up
    expected = OnnxRuntimeBackend(MODEL).embed([crops[(b + i) % len(crops)] for b in range(6) for i in range(8)])
    got = np.array([o.outputs[0].value["embedding"] for o in outcomes])
    assert np.abs(got - expected).max() < 1e-5


async def test_the_whole_pipeline_with_the_triton_backend_watched_by_prometheus(
    kafka: str, tmp_path: Path, triton_server: LocalTritonServer
) -> None:
    """The pipeline on Triton, scraped by a real Prometheus (../shared/bin) that evaluates
    deploy/prometheus/alerts.yml: every query of the Grafana dashboard and every rule evaluates
    without error and returns series, the worker is ready, no alert fires on a healthy pipeline,
    and the worker's own percentile equals Prometheus's `histogram_quantile` on the same buckets."""
    pipeline = Pipeline(tmp_path, [SAMPLES], extra={"triton_url": triton_server.url, "lag_interval_s": 1})
    await pipeline.start()
    prometheus = None
    try:
        if binary("prometheus") is not None:
            prometheus = LocalPrometheus(tmp_path / "prometheus", {"all": f"127.0.0.1:{pipeline.ops_ports['all']}"})
            await asyncio.to_thread(prometheus.start)
        gallery = sorted((SAMPLES / "gallery").rglob("*.jpg"))
        from tests.test_pipeline_e2e import enrol_gallery, search

        await enrol_gallery(pipeline)
        probes = [p for p in sorted((SAMPLES / "probes").rglob("*.jpg")) if p.parent.name != "azure_family1_son"]
        for i, path in enumerate(probes):
            await pipeline.submit(f"p{i}", search(f"p{i}", path, pipeline.settings))
        await pipeline.submit("bad-json", b"not json")  # a dead letter, for the dashboard's panel of them
        await pipeline.wait_for(lambda: len(pipeline.receiver.deliveries) >= len(probes), what="webhooks via Triton")
        by_id = {d.event["image_id"]: d.event for d in pipeline.receiver.deliveries}
        for i, path in enumerate(probes):
            assert by_id[f"p{i}"]["candidates"][0]["subject_id"] == path.parent.name
            assert by_id[f"p{i}"]["model"] == {"name": "sface", "version": "2021dec"}
        assert len(gallery) == 5
        if prometheus is None:
            pytest.skip("prometheus is neither in ../shared/bin nor on PATH (it is here and in CI): Triton part passed")
        await _every_query_answers(prometheus, pipeline)
    finally:
        if prometheus is not None:
            prometheus.stop()
        await pipeline.stop()


async def _every_query_answers(prometheus: LocalPrometheus, pipeline: Pipeline) -> None:
    dashboard = orjson.loads((ROOT / "deploy/grafana/facestream-dashboard.json").read_bytes())
    queries = {t["expr"] for panel in dashboard["panels"] for t in panel["targets"]}
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    recorded = [r["record"] for g in rules for r in g["rules"] if "record" in r]
    alerts = {r["alert"]: r["expr"] for g in rules for r in g["rules"] if "alert" in r}
    deadline = time.monotonic() + 60
    while True:  # rates need two scrapes, and recording rules an evaluation after them
        empty = [q for q in sorted(queries | set(recorded)) if not await asyncio.to_thread(prometheus.query, q)]
        if not empty or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert not empty, f"queries without series: {empty}"
    for expr in alerts.values():  # each alert's condition evaluates (a failing query raises)
        await asyncio.to_thread(prometheus.query, expr)
    loaded = await asyncio.to_thread(prometheus.rules)
    assert {r["name"] for r in loaded} == set(recorded) | set(alerts)
    assert [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []
    assert [r["name"] for r in loaded if r.get("state") == "firing"] == []  # nothing is wrong here
    [ready] = await asyncio.to_thread(prometheus.query, "facestream:worker_ready")
    assert ready["metric"]["service"] == "all" and ready["value"][1] == "1"  # noqa: PT018
    [triton_up] = await asyncio.to_thread(prometheus.query, "facestream:triton_up:min")
    assert triton_up["value"][1] == "1"

    # The worker's dashboard and Prometheus estimate the same percentile from the same buckets
    # (the pipeline is idle now: nothing is observed between the scrape and the status).
    ops = f"http://127.0.0.1:{pipeline.ops_ports['all']}"
    async with httpx.AsyncClient(timeout=5) as http:
        shown = (await http.get(f"{ops}/api/status")).json()["stages"]["detector"]
    await asyncio.sleep(2.5)  # a scrape after it
    for q, column in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        expr = f'histogram_quantile({q}, sum by (le) (facestream_stage_seconds_bucket{{stage="detector"}}))'
        [estimate] = await asyncio.to_thread(prometheus.query, expr)
        assert 1000 * float(estimate["value"][1]) == pytest.approx(shown[column], abs=0.01), column
