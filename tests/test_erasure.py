"""Erasure (services/matcher/eraser.py) on a real broker with real workers: two matcher replicas,
a subject erased with `facestream gallery erase` while an enrolment of that subject is still in
flight, behind two malformed erasure requests (dead-lettered). Afterwards no replica returns the
subject, the gallery topic's records of the subject can no longer be decrypted, the in-flight
enrolment does not survive, the receipt validates against its schema, names both replicas'
acknowledgements and its signature verifies; the subscriber that was sent matches naming the
subject gets a signed `face.subject.erased` webhook; `gallery export` shows what is held before and
after; erasing twice gives the same receipt; an unknown subject is an error on the command line
and a receipt saying so from the topic; the retention sweeper erases a subject whose term has
passed (with a receipt) and removes a point whose own term has passed while its subject stays; a
replica rebuilt from the topic, and one killed and restarted, do not bring the subject back; a
matcher given another gallery key refuses to start."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography.fernet import Fernet

from devtools.workers import spawn
from facestream import client, contracts
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso
from facestream.services.matcher.eraser import receipts, verify
from facestream.services.matcher.keys import KeyRing, gallery_keys
from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline, held, ready, searched_by
from tests.helpers import Server, enrolment

SERVICES = [("detector", "embedder"), ("matcher",), ("matcher",), ("notifier",)]
GALLERY = sorted((SAMPLES / "gallery").rglob("*.jpg"))
TARGET = GALLERY[0].parent.name  # the subject erased
SECOND = sorted((SAMPLES / "probes" / TARGET).glob("*.jpg"))[0]  # another photo of them
SHORT = sorted((SAMPLES / "probes" / "azure_family1_son").glob("*.jpg"))[0]  # a subject on a short term
KEEPS = GALLERY[1].parent.name  # a subject with a second photo on a short term
KEEPS_SHORT = sorted((SAMPLES / "probes" / KEEPS).glob("*.jpg"))[0]
TERM_S = 30  # the short term, from the start of the test: past it well after the enrolments (~10 s)


def gallery_cli(pipeline: Pipeline, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    command = [
        sys.executable,
        "-m",
        "facestream.services",
        "--config",
        str(config or pipeline.config),
        "gallery",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)


def receipt_of(output: str) -> dict[str, Any]:
    body = output[output.index("{") : output.rindex("}") + 1]
    receipt: dict[str, Any] = orjson.loads(body)
    return receipt


async def searches(pipeline: Pipeline, round_: str, n: int = 8) -> list[dict[str, Any]]:
    """`n` searches of the target's photo (as many image ids: they reach both replicas)."""
    ids = [f"{round_}-{i}" for i in range(n)]
    for image_id in ids:
        intent = client.search_intent("erasure test", "CASE-ERASE", "test-suite")
        ref = client.image_ref(GALLERY[0], pipeline.settings)
        await pipeline.submit(image_id, client.submission(image_id, ref, intent, "tests"))

    async def answered() -> bool:
        return set(ids) <= {m["image_id"] for m in await pipeline.events("matches")}

    await pipeline.wait_for(answered, what=f"the searches of {round_}")
    return [m for m in await pipeline.events("matches") if m["image_id"] in ids]


def found(results: list[dict[str, Any]]) -> set[str]:
    return {c["subject_id"] for m in results for c in m["candidates"]}


async def test_an_erased_subject_is_gone_everywhere(kafka: str, tmp_path: Path) -> None:
    release = asyncio.Event()
    photo = SECOND.read_bytes()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()  # the enrolment waits here, in the detector, until the erasure is done
        return web.Response(body=photo, content_type="image/jpeg")

    async with Server({"/late.jpg": slow}) as server:
        pipeline = Pipeline(tmp_path, [SAMPLES], services=SERVICES, extra={"retention_sweep_s": 1})
        await pipeline.start()
        try:
            await run(pipeline, server, photo, release)
        finally:
            release.set()
            await pipeline.stop()


async def run(pipeline: Pipeline, server: Server, photo: bytes, release: asyncio.Event) -> None:
    settings = pipeline.settings
    term = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=TERM_S)).isoformat().replace("+00:00", "Z")
    for i, path in enumerate(GALLERY):
        await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, settings))
    await pipeline.submit("enrol-short", enrolment("enrol-short", SHORT, settings, retain_until=term))
    await pipeline.submit("enrol-keeps", enrolment("enrol-keeps", KEEPS_SHORT, settings, retain_until=term))

    async def enrolled() -> bool:
        return sum(m["status"] == "enrolled" for m in await pipeline.events("matches")) >= len(GALLERY) + 2

    await pipeline.wait_for(enrolled, what="the gallery")
    assert TARGET in found(await searches(pipeline, "before"))

    def sent() -> bool:  # a result in the matches topic is not yet a webhook received
        notices = [d.event for d in pipeline.receiver.deliveries if d.event["type"] == "face.match.candidates"]
        return any(c["subject_id"] == TARGET for n in notices for c in n["candidates"])

    await pipeline.wait_for(sent, what="the subscriber to be sent the target's matches")

    # What is held about the subject, for an access request: never the template itself.
    exported = gallery_cli(pipeline, "export", TARGET)
    assert exported.returncode == 0, exported.stderr
    held_before = orjson.loads(exported.stdout)
    assert [p["image_id"] for p in held_before["points"]] == ["enrol-0"]
    assert held_before["points"][0]["consent"]["consent_ref"] == f"consent/{TARGET}"
    assert "not exported" in held_before["points"][0]["embedding"]
    assert "embedding_enc" not in exported.stdout
    assert "token" not in exported.stdout
    assert len(held_before["data_keys"]) == 1
    assert [e["subscription"] for e in held_before["subscribers_sent_matches"]] == ["test-receiver"]

    # An enrolment of the subject, submitted before the erasure, still in flight during it.
    late = enrolment("enrol-late", SECOND, settings)
    late["image"] = {"uri": server.url("/late.jpg"), "sha256": hashlib.sha256(photo).hexdigest()}
    await pipeline.submit("enrol-late", late)
    await asyncio.sleep(1.0)

    # Malformed erasure requests (any publisher can send them) are dead-lettered with their reason;
    # the eraser goes on to the real one behind them.
    requests = settings.topic("gallery.requests")
    bad = {b"{not json": "not JSON", orjson.dumps({"event_type": "subject.erasure_requested"}): "invalid"}
    for value in bad:
        await pipeline.producer.send_and_wait(requests, value, key=TARGET.encode())

    erased = await asyncio.to_thread(
        gallery_cli, pipeline, "erase", TARGET, "--reason", "consent withdrawn", "--requested-by", "dpo@example"
    )
    assert erased.returncode == 0, erased.stderr
    assert "signature: valid" in erased.stdout
    receipt = receipt_of(erased.stdout)
    contracts.validate("subject.erased", receipt)
    assert (receipt["subject_id"], receipt["reason"], receipt["requested_by"]) == (
        TARGET,
        "consent withdrawn",
        "dpo@example",
    )
    assert receipt["points_removed"] == 1
    assert receipt["data_keys_destroyed"] == 1
    assert receipt["subject_was_held"] is True
    # Both live replicas acknowledged it, each past the erasure's offset.
    assert sorted(a["replica_id"].rpartition("/")[2] for a in receipt["replicas"]) == ["replica-0", "replica-1"]
    assert receipt["replicas_pending"] == []
    keys = gallery_keys(Settings(data_dir=settings.data_dir))
    assert verify(receipt, keys)
    assert not verify({**receipt, "points_removed": 0}, keys), "a changed receipt does not verify"

    letters = [orjson.loads(v) for _, v in await pipeline.read("dlq")]
    refused = [x for x in letters if x["source_topic"] == requests]
    assert [(x["stage"], x["reason"]) for x in refused] == [("matcher", "malformed_event")] * 2
    assert all(any(word in x["detail"] for word in bad.values()) for x in refused)

    # No replica returns the subject.
    after = await searches(pipeline, "after")
    assert TARGET not in found(after)
    matchers = [pipeline.slots[slot] for slot in (1, 2)]
    assert all(searched_by(pipeline, m) & {r["image_id"] for r in after} for m in matchers), "both replicas answered"

    # The gallery topic still holds the subject's record (compaction has not run), unreadable.
    ring = KeyRing(keys.wrapper)
    for key, value in await pipeline.read("gallery.keys"):
        ring.apply(key or "", value or None)
    points = [orjson.loads(v) for _, v in await pipeline.read("gallery") if v and b'"gallery.point"' in v]
    theirs = [p for p in points if p["subject_id"] == TARGET]
    others = [p for p in points if p["subject_id"] != TARGET]
    assert theirs, "the record is still in the log"
    assert all(ring.decrypt(p["embedding_enc"]["key_id"], p["embedding_enc"]["token"]) is None for p in theirs)
    assert all(
        len(ring.decrypt(p["embedding_enc"]["key_id"], p["embedding_enc"]["token"]) or []) == 128 for p in others
    )

    # The subscriber sent matches naming the subject is told, in a signed webhook (the receiver
    # verifies every signature); the note of who was sent whom goes with it.
    def told() -> list[dict[str, Any]]:
        return [d.event for d in pipeline.receiver.deliveries if d.event["type"] == "face.subject.erased"]

    await pipeline.wait_for(lambda: bool(told()), what="the erasure notice")
    [notice] = told()
    assert (notice["subject_id"], notice["erasure_request_id"]) == (TARGET, receipt["request_id"])
    assert "consent withdrawn" not in orjson.dumps(notice).decode(), "the notice does not carry the reason"
    contracts.validate("webhook.delivery", {**_job_shell(), "payload": notice})
    held_after = orjson.loads(gallery_cli(pipeline, "export", TARGET).stdout)
    assert held_after["points"] == []
    assert held_after["data_keys"] == []
    assert held_after["erasure_receipt"] == receipt
    assert held_after["subscribers_sent_matches"] == []

    # The enrolment that was in flight does not survive the erasure.
    release.set()

    async def refused() -> bool:
        letters = [orjson.loads(v) for _, v in await pipeline.read("dlq")]
        return any(x["image_id"] == "enrol-late" and x["reason"] == "enrolment_rejected" for x in letters)

    await pipeline.wait_for(refused, what="the in-flight enrolment refused")
    assert TARGET not in found(await searches(pipeline, "later"))
    listed = gallery_cli(pipeline, "list")
    assert TARGET not in listed.stdout
    assert {path.parent.name for path in GALLERY[1:]} <= {line.split()[0] for line in listed.stdout.splitlines()}

    # Erasing twice: the same receipt. An unknown subject: an error saying so.
    again = await asyncio.to_thread(gallery_cli, pipeline, "erase", TARGET, "--reason", "again", "--requested-by", "x")
    assert again.returncode == 0, again.stderr
    assert "already erased" in again.stdout
    assert receipt_of(again.stdout) == receipt
    unknown = gallery_cli(pipeline, "erase", "nobody", "--reason", "r", "--requested-by", "x")
    assert unknown.returncode == 2
    assert "no subject 'nobody' in the gallery" in unknown.stderr
    # Settings that name no gallery (another topic prefix): said so, not shown as an empty gallery.
    elsewhere = pipeline.workdir / "elsewhere.toml"
    elsewhere.write_text(pipeline.config.read_text().replace(settings.topic_prefix, "nowhere"))
    missing = gallery_cli(pipeline, "list", config=elsewhere)
    assert missing.returncode == 2
    assert "there is no gallery topic nowhere.gallery" in missing.stderr
    # From the topic (an upstream system), an unknown subject is erased all the same (an enrolment
    # of it may be in flight) and its receipt says the gallery held nothing.
    request = {
        "schema_version": 1,
        "event_type": "subject.erasure_requested",
        "request_id": "upstream-nobody",
        "subject_id": "nobody",
        "reason": "access request",
        "requested_by": "upstream",
        "requested_at": now_iso(),
    }
    await pipeline.producer.send_and_wait(requests, contracts.dumps(request), key=b"nobody")

    async def nobody() -> bool:
        return "nobody" in await receipts(settings)

    await pipeline.wait_for(nobody, what="the unknown subject's receipt")
    none_held = (await receipts(settings))["nobody"]
    assert (none_held["subject_was_held"], none_held["points_removed"]) == (False, 0)
    shown = gallery_cli(pipeline, "receipt", TARGET)
    assert receipt_of(shown.stdout) == receipt
    assert "signature: valid" in shown.stdout

    # Retention: the subject whose only term has passed is erased by the sweeper, with a receipt;
    # the other keeps its first photo and loses the one whose term has passed.
    short = SHORT.parent.name

    async def swept() -> bool:
        return short in await receipts(settings)

    await pipeline.wait_for(swept, limit_s=TERM_S + 90, what="the retention sweeper's erasure")
    expired = (await receipts(settings))[short]
    assert (expired["reason"], expired["requested_by"], expired["points_removed"]) == (
        "retention_expired",
        "retention-sweeper",
        1,
    )
    assert verify(expired, keys)
    kept = gallery_cli(pipeline, "show", KEEPS)
    assert kept.returncode == 0, kept.stderr
    assert "1 points" in kept.stdout
    assert "enrol-keeps" not in kept.stdout
    assert short not in gallery_cli(pipeline, "list").stdout

    # A replica rebuilt from the beginning of the topic, and one killed and restarted on its own
    # disk, do not bring the subject back.
    pipeline.stop_slot(2)
    [free] = [folder for folder in settings.gallery_path.glob("replica-*") if not held(folder)]
    shutil.rmtree(free)
    rebuilt = pipeline.spawn_slot(2)
    await ready(pipeline, rebuilt)
    pipeline.kill_slot(1)
    restarted = pipeline.spawn_slot(1)
    await ready(pipeline, restarted)
    final = await searches(pipeline, "restarted")
    assert TARGET not in found(final)
    assert searched_by(pipeline, rebuilt) & {m["image_id"] for m in final}
    assert searched_by(pipeline, restarted) & {m["image_id"] for m in final}

    # A matcher started with another gallery key cannot read the data keys: it refuses to start.
    log = pipeline.workdir / "wrong-key.log"
    env = {"FACESTREAM_GALLERY_KEYS": Fernet.generate_key().decode(), "FACESTREAM_OPS_PORT": "-1"}
    wrong = spawn(pipeline.config, ["matcher"], log, env={**env, "FACESTREAM_CROPS_PORT": "-1"})
    assert await asyncio.to_thread(wrong.wait, 120) == 78  # EX_CONFIG
    assert "do not unwrap with this gallery key" in log.read_text()


def _job_shell() -> dict[str, Any]:
    """A delivery job's fields around a payload, to check a payload received against the contract."""
    return {
        "schema_version": 1,
        "event_type": "webhook.delivery",
        "webhook_id": "msg_" + "0" * 32,
        "subscription": "test-receiver",
        "event_id": "00000000-0000-0000-0000-000000000000",
        "attempt": 0,
        "due_at": now_iso(),
        "expires_at": now_iso(),
        "created_at": now_iso(),
    }
