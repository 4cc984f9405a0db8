"""Erasure (services/matcher/eraser.py) on a real broker with real workers: two matcher replicas,
a subject erased with `facestream gallery erase` while an enrolment of that subject is still in
flight, behind two malformed erasure requests (dead-lettered). Afterwards no replica returns the
subject, the gallery topic's records of the subject can no longer be decrypted, the in-flight
enrolment does not survive, the receipt validates against its schema and its signature verifies;
erasing twice gives the same receipt; an unknown subject is an error; a replica rebuilt from the
topic does not bring the subject back; a matcher given another gallery key refuses to start."""

from __future__ import annotations

import asyncio
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
from facestream.services.matcher.eraser import verify
from facestream.services.matcher.keys import KeyRing, gallery_keys
from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline, held, ready, searched_by
from tests.helpers import Server, enrolment

SERVICES = [("detector", "embedder"), ("matcher",), ("matcher",), ("notifier",)]
GALLERY = sorted((SAMPLES / "gallery").rglob("*.jpg"))
TARGET = GALLERY[0].parent.name  # the subject erased
SECOND = sorted((SAMPLES / "probes" / TARGET).glob("*.jpg"))[0]  # another photo of them


def gallery_cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    command = [sys.executable, "-m", "facestream.services", "--config", str(pipeline.config), "gallery", *args]
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
        pipeline = Pipeline(tmp_path, [SAMPLES], services=SERVICES)
        await pipeline.start()
        try:
            await run(pipeline, server, photo, release)
        finally:
            release.set()
            await pipeline.stop()


async def run(pipeline: Pipeline, server: Server, photo: bytes, release: asyncio.Event) -> None:
    settings = pipeline.settings
    for i, path in enumerate(GALLERY):
        await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, settings))

    async def enrolled() -> bool:
        return sum(m["status"] == "enrolled" for m in await pipeline.events("matches")) >= len(GALLERY)

    await pipeline.wait_for(enrolled, what="the gallery")
    assert TARGET in found(await searches(pipeline, "before"))

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

    # The enrolment that was in flight does not survive the erasure.
    release.set()

    async def refused() -> bool:
        letters = [orjson.loads(v) for _, v in await pipeline.read("dlq")]
        return any(x["image_id"] == "enrol-late" and x["reason"] == "enrolment_rejected" for x in letters)

    await pipeline.wait_for(refused, what="the in-flight enrolment refused")
    assert TARGET not in found(await searches(pipeline, "later"))
    listed = gallery_cli(pipeline, "list")
    assert TARGET not in listed.stdout
    assert len(listed.stdout.splitlines()) == len(GALLERY) - 1

    # Erasing twice: the same receipt. An unknown subject: an error saying so.
    again = await asyncio.to_thread(gallery_cli, pipeline, "erase", TARGET, "--reason", "again", "--requested-by", "x")
    assert again.returncode == 0, again.stderr
    assert "already erased" in again.stdout
    assert receipt_of(again.stdout) == receipt
    unknown = gallery_cli(pipeline, "erase", "nobody", "--reason", "r", "--requested-by", "x")
    assert unknown.returncode == 2
    assert "no subject 'nobody' in the gallery" in unknown.stderr
    shown = gallery_cli(pipeline, "receipt", TARGET)
    assert receipt_of(shown.stdout) == receipt
    assert "signature: valid" in shown.stdout

    # A replica rebuilt from the beginning of the topic does not bring the subject back.
    pipeline.stop_slot(2)
    [free] = [folder for folder in settings.gallery_path.glob("replica-*") if not held(folder)]
    shutil.rmtree(free)
    rebuilt = pipeline.spawn_slot(2)
    await ready(pipeline, rebuilt)
    final = await searches(pipeline, "rebuilt")
    assert TARGET not in found(final)
    assert searched_by(pipeline, rebuilt) & {m["image_id"] for m in final}

    # A matcher started with another gallery key cannot read the data keys: it refuses to start.
    log = pipeline.workdir / "wrong-key.log"
    env = {"FACESTREAM_GALLERY_KEYS": Fernet.generate_key().decode(), "FACESTREAM_OPS_PORT": "-1"}
    wrong = spawn(pipeline.config, ["matcher"], log, env={**env, "FACESTREAM_CROPS_PORT": "-1"})
    assert await asyncio.to_thread(wrong.wait, 120) == 78  # EX_CONFIG
    assert "do not unwrap with this gallery key" in log.read_text()
