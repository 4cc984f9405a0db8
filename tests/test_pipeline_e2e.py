"""The whole pipeline on the real local Kafka: submissions in, signed webhooks out.

The worker is the real `facestream run` process; the receiver is a real HTTP server on loopback
that verifies every signature. Nothing is faked.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import orjson
import pytest

from facestream import client, contracts
from facestream.services.audit import log as audit_log
from tests.conftest import SAMPLES
from tests.harness import Pipeline
from tests.helpers import api_knows, enrolment, new_token

GALLERY = sorted((SAMPLES / "gallery").rglob("*.jpg"))
PROBES = sorted((SAMPLES / "probes").rglob("*.jpg"))
NOT_ENROLLED = "azure_family1_son"


def search(image_id: str, path: Path, settings: Any, inline: bool | None = None) -> dict[str, Any]:
    intent = client.search_intent("end-to-end test", "CASE-E2E", "test-suite")
    return client.submission(image_id, client.image_ref(path, settings, inline), intent, "tests")


@pytest.fixture
async def pipeline(kafka: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    p = Pipeline(tmp_path, [SAMPLES, tmp_path])
    await p.start()
    yield p
    await p.stop()


def statuses(matches: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in matches:
        out.setdefault(m["image_id"], []).append(m["status"])
    return out


async def enrol_gallery(pipeline: Pipeline) -> None:
    for i, path in enumerate(GALLERY):
        await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, pipeline.settings))

    async def enrolled() -> bool:
        matches = await pipeline.events("matches")
        return sum(1 for m in matches if m["status"] == "enrolled") >= len(GALLERY)

    await pipeline.wait_for(enrolled, what="enrolments")


async def test_images_in_signed_webhooks_out(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    await enrol_gallery(pipeline)

    probe_ids = {f"probe-{i}": path for i, path in enumerate(PROBES)}
    for image_id, path in probe_ids.items():
        await pipeline.submit(image_id, search(image_id, path, settings))
    # Bad input between good input: it must be dead-lettered while the rest flows on.
    await pipeline.submit("bad-json", b"{this is not json")
    missing_consent = enrolment("bad-consent", GALLERY[0], settings)
    del missing_consent["intent"]["consent"]
    await pipeline.submit("bad-consent", missing_consent)
    garbage = b"\xff\xd8\xff\xe0 definitely not a jpeg"
    await pipeline.submit(
        "bad-image",
        search("bad-image", GALLERY[0], settings)
        | {"image": {"data_b64": base64.b64encode(garbage).decode(), "sha256": hashlib.sha256(garbage).hexdigest()}},
    )
    late = "probe-late"
    await pipeline.submit(late, search(late, PROBES[0], settings, inline=True))

    expected_matches = sum(1 for p in PROBES if p.parent.name != NOT_ENROLLED) + 1
    state: dict[str, Any] = {}

    async def settled() -> bool:
        state["matches"] = await pipeline.events("matches")
        state["dlq"] = await pipeline.events("dlq")
        searched = {m["image_id"] for m in state["matches"] if m["status"] in ("match", "no_match", "no_face")}
        return (
            searched >= {*probe_ids, late}
            and len(state["dlq"]) >= 3
            and len(pipeline.receiver.deliveries) >= expected_matches
        )

    await pipeline.wait_for(settled, what="probe outcomes, dead letters and webhooks")

    receiver = pipeline.receiver
    assert receiver.rejected == 0, "every signature verifies"
    assert receiver.duplicates == 0
    webhook_ids = [d.webhook_id for d in receiver.deliveries]
    assert len(webhook_ids) == len(set(webhook_ids)) == expected_matches
    by_image = Counter(d.event["image_id"] for d in receiver.deliveries)
    for image_id, path in probe_ids.items():
        if path.parent.name == NOT_ENROLLED:
            assert by_image[image_id] == 0, f"{path.name}: someone not enrolled got a candidate"
        else:
            assert by_image[image_id] == 1
            [delivery] = [d for d in receiver.deliveries if d.event["image_id"] == image_id]
            top = delivery.event["candidates"][0]
            assert (top["subject_id"], top["rank"]) == (path.parent.name, 1), path
            assert delivery.event["review"].startswith("candidate")
            assert delivery.webhook_id == "msg_" + delivery.event["event_id"].replace("-", "")

    # Each delivery links its probe's aligned face, served by the notifier behind a signed link;
    # enrolment photos never become crops.
    crops = await pipeline.events("crops")
    assert {c["image_id"] for c in crops} == set(probe_ids) | {late}
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        for delivery in receiver.deliveries[:3]:
            response = await http.get(delivery.event["probe_crop_url"])
            assert response.status_code == 200
            face = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
            assert face.shape == (112, 112, 3)
        forged = await http.get(receiver.deliveries[0].event["probe_crop_url"].replace("signature=", "signature=x"))
        assert forged.status_code == 403

    letters = {d["key"]: d for d in state["dlq"]}
    assert letters["bad-json"]["reason"] == "malformed_event"
    assert letters["bad-json"]["stage"] == "detector"
    assert letters["bad-consent"]["reason"] == "malformed_event"
    assert "consent" in letters["bad-consent"]["detail"]
    assert letters["bad-image"]["reason"] == "undecodable"
    assert "payload_b64" not in letters["bad-json"]  # never the record's value: a reference to it
    assert letters["bad-json"]["source_topic"] == settings.topic("images")

    # The audit chain holds every enrolment, every search (with its purpose and case), every
    # refusal and every crop fetch, each once, and verifies.
    searched = [m for m in state["matches"] if m["status"] in ("match", "no_match", "no_face")]
    chain: dict[str, list[dict[str, Any]]] = {}

    async def audited() -> bool:
        chain.clear()
        for record in await audit_log.records(settings):
            chain.setdefault(record["entry"]["action"], []).append(record["entry"])
        return (
            len(chain.get("enrolment", [])) >= len(GALLERY)
            and len(chain.get("search", [])) >= len(searched)
            and len(chain.get("refusal", [])) >= 3
            and len(chain.get("crop_fetch", [])) >= 3
        )

    await pipeline.wait_for(audited, what="the audit chain")
    assert {e["refs"]["subject_id"] for e in chain["enrolment"]} == {p.parent.name for p in GALLERY}
    assert all(e["actor"] == "test-suite" for e in chain["enrolment"] + chain["search"])
    assert {e["refs"]["match_event_id"] for e in chain["search"]} == {m["event_id"] for m in searched}
    assert all(
        e["details"]["purpose"] == "end-to-end test" and e["refs"]["case_ref"] == "CASE-E2E" for e in chain["search"]
    )
    refusals = {e["refs"].get("image_id"): e for e in chain["refusal"]}
    assert refusals["bad-image"]["details"]["reason"] == "undecodable"
    assert refusals["bad-image"]["refs"]["case_ref"] == "CASE-E2E"  # who asked, though the image failed
    assert refusals["bad-consent"]["actor"] == "upstream:unknown"  # malformed: nobody it names is trusted
    assert [e["actor"] for e in chain["crop_fetch"]] == ["subscription:test-receiver"] * 3
    verdict = await audit_log.check(settings)
    assert verdict.ok, verdict.problem

    # Every event on every topic honours its contract.
    for topic, event_type in (
        ("faces", "face.detected"),
        ("embeddings", "face.embedded"),
        ("matches", "match.result"),
        ("dlq", "dead.letter"),
        ("deliveries", "webhook.delivery"),
        ("deliveries.log", "delivery.attempt"),
        ("crops", "face.crop"),
    ):
        events = await pipeline.events(topic)
        assert events, topic
        for event in events:
            contracts.validate(event_type, event)
            assert contracts.reference_errors(event_type, event) == []
    for key, raw in await pipeline.read("images"):
        if key not in letters:
            contracts.validate("image.submitted", orjson.loads(raw))

    # Redelivery: the same enrolment and the same search again change nothing downstream.
    await pipeline.submit("enrol-0", enrolment("enrol-0", GALLERY[0], settings))
    again = next(i for i, p in probe_ids.items() if p.parent.name != NOT_ENROLLED)
    await pipeline.submit(again, search(again, probe_ids[again], settings))
    # The notifier knows that webhook id is delivered: the job made again is dropped, not sent.

    async def dropped() -> bool:
        log = await pipeline.events("deliveries.log")
        return any(e["outcome"] == "dropped" and e["reason"] == "already_delivered" for e in log)

    await pipeline.wait_for(dropped, what="the redelivered webhook's job dropped")
    assert receiver.duplicates == 0
    assert len(receiver.deliveries) == expected_matches
    matches = await pipeline.events("matches")
    sizes = {m["gallery"]["size"] for m in matches if m["status"] in ("match", "no_match")}
    assert sizes == {len(GALLERY)}, "a redelivered enrolment never adds a gallery point"

    # Log hygiene: structured lines carry ids and trace ids, never biometric or consent data.
    logs = pipeline.logs(limit=None)
    audit = [orjson.loads(line) for line in logs.splitlines() if line.startswith("{") and '"searched"' in line]
    assert audit, "every search is written to the audit log"
    assert all(a["trace_id"] and a["image_id"] and a["case_ref"] == "CASE-E2E" for a in audit)
    embeddings = [e["embedding"] for e in await pipeline.events("embeddings")]
    consents = [enrolment(f"enrol-{i}", p, settings)["intent"]["consent"] for i, p in enumerate(GALLERY)]
    assert_clean_logs(logs, GALLERY + PROBES, embeddings, consents)


async def test_services_run_as_separate_workers(kafka: str, tmp_path: Path) -> None:
    services = [["detector"], ["embedder"], ["matcher"], ["notifier"], ["api", "audit"]]
    pipeline = Pipeline(tmp_path, [SAMPLES], services=services)
    await pipeline.start()
    try:
        await enrol_gallery(pipeline)
        # The API in a worker of its own: it publishes, and its ?wait sees the outcome other workers make.
        _, token = await new_token(pipeline.settings, "case-system", ["publisher"])
        probe = next(p for p in PROBES if p.parent.name == "azure_family2_man")
        data = probe.read_bytes()
        body = {
            "image": {"data_b64": base64.b64encode(data).decode(), "sha256": hashlib.sha256(data).hexdigest()},
            "purpose": "separate workers test",
            "case_ref": "CASE-SEP",
        }
        api = f"http://127.0.0.1:{pipeline.api_ports['api-audit']}"
        await pipeline.wait_for(lambda: api_knows(api, token), what="the API worker serving, with the token")
        async with httpx.AsyncClient(base_url=api, trust_env=False, timeout=90) as http:
            answer = await http.post("/v1/searches?wait=60", json=body, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        await pipeline.wait_for(lambda: len(pipeline.receiver.deliveries) >= 1, what="the webhook")
        [delivery] = pipeline.receiver.deliveries
        assert delivery.event["candidates"][0]["subject_id"] == "azure_family2_man"
        assert delivery.event["event_id"] in {r["event_id"] for r in answer.json()["results"]}

        # The audit sequencer in the API's worker chains the search, under the token's name.
        async def audited() -> bool:
            return any(r["entry"]["action"] == "search" for r in await audit_log.records(pipeline.settings))

        await pipeline.wait_for(audited, what="the search in the audit chain")
        [searched] = [
            r["entry"] for r in await audit_log.records(pipeline.settings) if r["entry"]["action"] == "search"
        ]
        assert (searched["actor"], searched["refs"]["case_ref"]) == ("case-system", "CASE-SEP")
        assert (await audit_log.check(pipeline.settings)).ok
        # Apart, every face crosses the faces topic, under its contract.
        faces = await pipeline.events("faces")
        assert len(faces) >= len(GALLERY) + 1
        for event in faces:
            contracts.validate("face.detected", event)
            assert contracts.reference_errors("face.detected", event) == []
    finally:
        await pipeline.stop()


async def test_a_crashed_worker_loses_nothing_and_duplicates_nothing(pipeline: Pipeline) -> None:
    """SIGKILL the worker mid-stream and start a new one: every probe still yields its webhook,
    redelivered work produces the same webhook ids (the receiver de-duplicates on them), and the
    gallery holds no duplicate point."""
    await enrol_gallery(pipeline)
    enrolled_probes = [p for p in PROBES if p.parent.name != NOT_ENROLLED]
    expected = {}
    for round_ in range(4):
        for i, path in enumerate(enrolled_probes):
            image_id = f"crash-{round_}-{i}"
            expected[image_id] = path.parent.name
            await pipeline.submit(image_id, search(image_id, path, pipeline.settings))
    receiver = pipeline.receiver
    await pipeline.wait_for(lambda: len(receiver.deliveries) >= 3, what="the first webhooks")
    pipeline.kill_workers()
    before = len(receiver.deliveries)
    assert before < len(expected), "the worker was killed mid-stream"
    pipeline.spawn_workers()
    await pipeline.wait_for(lambda: len(receiver.deliveries) >= len(expected), what="every webhook after the crash")
    delivered = {d.event["image_id"]: d for d in receiver.deliveries}
    assert set(delivered) == set(expected)
    for image_id, subject in expected.items():
        assert delivered[image_id].event["candidates"][0]["subject_id"] == subject
    assert len({d.webhook_id for d in receiver.deliveries}) == len(expected)
    assert receiver.rejected == 0
    matches = await pipeline.events("matches")
    assert {m["gallery"]["size"] for m in matches if m["status"] == "match"} == {len(GALLERY)}


def assert_clean_logs(
    logs: str, photos: list[Path], embeddings: list[list[float]], consents: list[dict[str, str]]
) -> None:
    """No embedding values, image bytes or consent details in the workers' logs."""
    assert logs.strip(), "the workers logged something"
    for vector in embeddings[:20]:
        for value in vector[:16]:
            if abs(value) > 1e-3:
                assert f"{value:.6f}"[:8] not in logs, "an embedding value reached the logs"
    for photo in photos:
        head = base64.b64encode(photo.read_bytes()[:60]).decode()[:40]
        assert head not in logs, f"bytes of {photo.name} reached the logs"
    assert re.search(r"[A-Za-z0-9+/]{200,}", logs) is None, "a long base64 run reached the logs"
    for consent in consents:
        for key in ("consent_ref", "source_attestation"):
            assert consent[key] not in logs, f"{key} reached the logs"
    assert "explicit_consent" not in logs
    assert "retain_until" not in logs


async def test_a_pending_retry_survives_a_killed_worker(kafka: str, tmp_path: Path) -> None:
    """The subscriber is down when the match is made; the worker is SIGKILLed while the retry
    waits in its retry topic; the subscriber comes back and a new worker delivers it, once."""
    pipeline = Pipeline(tmp_path, [SAMPLES], extra={"webhook_schedule_s": [0, 4, 8]})
    await pipeline.start()
    try:
        await enrol_gallery(pipeline)
        receiver = pipeline.receiver
        await receiver.stop()  # keeps its port, now closed
        probe = next(p for p in PROBES if p.parent.name == "azure_family2_lady")
        await pipeline.submit("probe-down", search("probe-down", probe, pipeline.settings))

        async def retry_waiting() -> bool:
            return any(e["outcome"] == "retry_scheduled" for e in await pipeline.events("deliveries.log"))

        await pipeline.wait_for(retry_waiting, what="the scheduled retry")
        pipeline.kill_workers()
        await receiver.start()
        pipeline.spawn_workers()
        await pipeline.wait_for(lambda: len(receiver.deliveries) >= 1, what="the retry after the crash")
        [delivery] = receiver.deliveries
        assert delivery.event["image_id"] == "probe-down"
        assert delivery.event["candidates"][0]["subject_id"] == "azure_family2_lady"
        log = await pipeline.events("deliveries.log")
        assert next(e["reason"] for e in log if e["outcome"] == "retry_scheduled") == "connection_error"
    finally:
        await pipeline.stop()
