"""`python -m devtools.demo` (`make demo`): the whole pipeline on a real local Kafka, visibly.

Starts Kafka if needed, runs the four services as a separate worker process, enrols every photo
under the gallery folder (folder name = subject id), submits every photo under the probes
folder, receives the webhooks on a local receiver that verifies each signature, prints matches
as they arrive and a summary, then shuts everything down. Each run uses its own topics and
gallery, so runs never see each other's data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from devtools.receiver import Delivery, WebhookReceiver
from devtools.workers import ROOT, spawn, terminate
from facestream import client
from facestream.config import Settings, load_settings, to_toml
from facestream.contracts.timeutil import parse_iso
from facestream.io.broker import local_broker
from facestream.io.kafka import consumer, producer
from facestream.services.audit import log as audit_log
from facestream.services.main import ensure_topics
from facestream.services.notifier.subscriptions import new_secret

SAMPLES = ROOT / "samples"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
RETAIN = (datetime.date.today() + datetime.timedelta(days=365)).isoformat()  # within the 3-year maximum


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


@dataclass
class Tracker:
    """Outcome of every submitted image, from the matches and dlq topics and the webhooks."""

    kind: dict[str, str]  # image id -> "enrol" | "probe"
    results: dict[str, dict[int, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    no_face: set[str] = field(default_factory=set)
    dead: dict[str, str] = field(default_factory=dict)
    webhooks: dict[tuple[str, int], Delivery] = field(default_factory=dict)
    done_at: dict[str, float] = field(default_factory=dict)
    face_count: dict[str, int] = field(default_factory=dict)

    def complete(self, image_id: str) -> bool:
        if image_id in self.no_face or image_id in self.dead:
            return True
        faces = self.results.get(image_id, {})
        count = self.face_count.get(image_id)
        if count is None or len(faces) < count:
            return False
        return all(r["status"] != "match" or (image_id, i) in self.webhooks for i, r in faces.items())

    def update(self, image_id: str) -> bool:
        if image_id not in self.done_at and self.complete(image_id):
            self.done_at[image_id] = time.monotonic()
            return True
        return False


async def _follow(settings: Settings, tracker: Tracker, on_done: Any, stop: asyncio.Event) -> None:
    cons = consumer(settings, "matches", "dlq")
    await cons.start()
    try:
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    event = orjson.loads(r.value)
                    image_id = r.key.decode() if r.key else event.get("image_id")
                    if image_id not in tracker.kind:
                        continue
                    if event["event_type"] == "dead.letter":
                        tracker.dead[image_id] = f"{event['stage']}: {event['reason']}: {event['detail'][:120]}"
                    elif event["status"] == "no_face":
                        tracker.no_face.add(image_id)
                    else:
                        tracker.results[image_id][event["face_index"]] = event
                        tracker.face_count[image_id] = event["face_count"]
                    if tracker.update(image_id):
                        on_done(image_id)
    finally:
        await cons.stop()


def _stage_seconds(
    tracker: Tracker, probe_ids: list[str], delivered_at: dict[tuple[str, int], float]
) -> dict[str, float]:
    sums: dict[str, list[float]] = defaultdict(list)
    for image_id in probe_ids:
        for result in tracker.results.get(image_id, {}).values():
            for stage, seconds in result.get("timings", {}).items():
                sums[stage].append(seconds)
    out = {stage: round(sum(v) / len(v), 4) for stage, v in sums.items() if v}
    if delivered_at:
        out["notifier"] = round(sum(delivered_at.values()) / len(delivered_at), 4)
    return out


async def run_demo(
    gallery: Path, probes: Path, quiet: bool = False, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Enrol `gallery`, search `probes` (absolute paths); Kafka must be running. Returns the report.
    `overrides`: the worker's settings beyond the demo's own (tests and benchmarks)."""
    workdir = Path(tempfile.mkdtemp(prefix="facestream-demo-"))
    run_id = f"demo{int(time.time())}{secrets.token_hex(2)}"
    secret = new_secret()
    gallery_images, probe_images = _images(gallery), _images(probes)
    kind: dict[str, str] = {}
    paths: dict[str, Path] = {}
    for i, p in enumerate(gallery_images):
        kind[f"enrol-{i:06d}"], paths[f"enrol-{i:06d}"] = "enrol", p
    for i, p in enumerate(probe_images):
        kind[f"probe-{i:06d}"], paths[f"probe-{i:06d}"] = "probe", p
    tracker = Tracker(kind)
    delivered_at: dict[tuple[str, int], float] = {}

    def on_delivery(d: Delivery) -> None:
        key = (d.event["image_id"], d.event["face_index"])
        tracker.webhooks[key] = d
        match = tracker.results.get(key[0], {}).get(key[1])
        if match is not None:
            delivered_at[key] = max(0.0, time.time() - _epoch(match["occurred_at"]))
        if not quiet:
            top = d.event["candidates"][0]
            rel = paths[key[0]].relative_to(probes) if key[0] in paths else key[0]
            print(
                f"  match  {rel} (face {key[1]}) -> {top['subject_id']} score {top['score']:.3f} "
                f"rank 1 of {len(d.event['candidates'])}  [{d.webhook_id}, signature verified]",
                flush=True,
            )
        if tracker.update(key[0]):
            on_done(key[0])

    receiver = WebhookReceiver(secret, on_delivery=on_delivery)
    await receiver.start()
    settings_values: dict[str, Any] = {
        "topic_prefix": run_id,
        "app_id": run_id,
        "data_dir": workdir / "state",
        "image_roots": [str(gallery), str(probes)],
        "webhook_allow_private": ["127.0.0.1"],
        "ops_port": 0,  # any free port: the demo must not collide with a running worker
        "crops_port": 0,
        "api_port": 0,
        "audit_checkpoint_s": 1,  # the summary shows the chain sealed by a signed checkpoint
        **(overrides or {}),
    }
    config_path = workdir / "facestream.toml"
    config_path.write_text(
        to_toml(
            settings_values, [{"name": "demo-receiver", "url": receiver.url, "secret": secret, "all_watchlists": True}]
        )
    )
    config_path.chmod(0o600)
    settings = load_settings(config_path)
    await ensure_topics(settings)
    log_path = workdir / "worker.log"
    worker = spawn(config_path, log=log_path)
    print(
        f"demo {run_id}: {len(gallery_images)} gallery photos, {len(probe_images)} probes; "
        f"worker pid {worker.pid}, log {log_path}",
        flush=True,
    )
    stop = asyncio.Event()
    enrol_ids = [i for i, k in kind.items() if k == "enrol"]
    probe_ids = [i for i, k in kind.items() if k == "probe"]
    all_done = asyncio.Event()
    phase: list[str] = list(enrol_ids)

    def on_done(image_id: str) -> None:
        if all(i in tracker.done_at for i in phase):
            all_done.set()
        if not quiet and kind[image_id] == "probe":
            rel = paths[image_id].relative_to(probes)
            if image_id in tracker.dead:
                print(f"  dead   {rel}: {tracker.dead[image_id]}", flush=True)
            elif image_id in tracker.no_face:
                print(f"  noface {rel}", flush=True)
            elif all(r["status"] == "no_match" for r in tracker.results[image_id].values()):
                print(f"  none   {rel}: no candidate above the threshold", flush=True)

    follower = asyncio.create_task(_follow(settings, tracker, on_done, stop))
    prod = producer(settings)
    await prod.start()
    try:
        t0 = time.monotonic()
        futures = []
        for image_id in enrol_ids:
            subject = paths[image_id].relative_to(gallery).parts[0]
            intent = client.enroll_intent(
                subject,
                "demo",
                lawful_basis="explicit_consent",
                consent_ref=f"demo-consent/{subject}",
                retain_until=RETAIN,
                source_attestation="sample photo published for face identification (MIT)",
                enrolled_by="facestream-demo",
            )
            event = client.submission(image_id, client.image_ref(paths[image_id], settings), intent, "demo")
            futures.append(await client.publish(prod, settings, event))
        await asyncio.gather(*futures)
        if enrol_ids:
            await _wait(all_done, follower, worker, 600 + len(enrol_ids))
        enrolled = sum(1 for i in enrol_ids if any(r["status"] == "enrolled" for r in tracker.results[i].values()))
        print(f"enrolled {enrolled} of {len(enrol_ids)} gallery photos in {time.monotonic() - t0:.1f} s", flush=True)
        all_done.clear()
        phase[:] = probe_ids
        intent = client.search_intent("demonstration search", f"DEMO-{run_id}", "facestream-demo")
        first_submit = time.monotonic()
        futures = []
        for image_id in probe_ids:
            event = client.submission(image_id, client.image_ref(paths[image_id], settings), intent, "demo")
            futures.append(await client.publish(prod, settings, event))
        await asyncio.gather(*futures)
        if probe_ids:
            await _wait(all_done, follower, worker, 600 + len(probe_ids))
        crops = await _fetch_crops(receiver)
        chain = await _audited(settings, len(enrol_ids) + len(probe_ids))
    finally:
        stop.set()
        await prod.stop()
        await asyncio.gather(follower, return_exceptions=True)
        terminate([worker])
        await receiver.stop()
        await _delete_topics(settings)
        # The run's keys, crops, gallery index and the config with its webhook secret go with its
        # topics; only the worker's log (no biometric data, no secrets) stays for a look.
        shutil.rmtree(workdir / "state", ignore_errors=True)
        config_path.unlink(missing_ok=True)

    last = max((tracker.done_at[i] for i in probe_ids), default=first_submit)
    elapsed = max(last - first_submit, 1e-9)
    summary = _summary(tracker, enrol_ids, probe_ids, paths, probes, elapsed, receiver, delivered_at)
    summary["totals"]["probe_crops_fetched"] = crops
    summary["audit"] = chain
    summary["timings"]["probe_window_monotonic"] = [first_submit, last]  # for a CPU meter in this process
    # Search graphs the embedded gallery built aside and swapped in (gallery_index_after).
    summary["totals"]["gallery_graphs_built"] = log_path.read_text(errors="replace").count("gallery_graph_built")
    _print_summary(summary)
    return summary


async def _audited(settings: Settings, at_least: int, limit_s: float = 20.0) -> dict[str, Any]:
    """The audit chain once it holds `at_least` entries (every enrolment and search) and a signed
    checkpoint covers them all, verified."""
    deadline = time.monotonic() + limit_s
    while True:
        verdict = await audit_log.check(settings)
        sealed = verdict.records >= at_least and verdict.unsealed == 0
        if sealed or not verdict.ok or time.monotonic() > deadline:
            problem = None if verdict.problem is None else str(verdict.problem)
            return {
                "entries": verdict.records,
                "checkpoints": verdict.checkpoints,
                "verified": verdict.ok,
                "problem": problem,
            }
        await asyncio.sleep(0.5)


async def _fetch_crops(receiver: WebhookReceiver) -> int:
    """Fetch each delivery's probe crop through its signed link, as a reviewer's tool would."""
    fetched = 0
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        for d in receiver.deliveries:
            response = await http.get(d.event["probe_crop_url"])
            fetched += response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    return fetched


def _epoch(iso: str) -> float:
    return parse_iso(iso).timestamp()


async def _wait(
    done: asyncio.Event, follower: asyncio.Task[None], worker: subprocess.Popen[bytes], limit_s: float
) -> None:
    deadline = time.monotonic() + limit_s
    while not done.is_set():
        if follower.done():
            follower.result()
        if worker.poll() is not None:
            raise SystemExit(f"worker exited with {worker.returncode}; see its log")
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for outcomes")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.5)


async def _delete_topics(settings: Settings) -> None:
    from facestream.io.kafka import delete_topics

    try:
        await delete_topics(settings)
    except Exception as exc:  # leftover demo topics are harmless
        print(f"could not delete demo topics: {exc}", file=sys.stderr)


def _summary(
    tracker: Tracker,
    enrol_ids: list[str],
    probe_ids: list[str],
    paths: dict[str, Path],
    probes: Path,
    elapsed: float,
    receiver: WebhookReceiver,
    delivered_at: dict[tuple[str, int], float],
) -> dict[str, Any]:
    per_probe = []
    matches = no_matches = no_face = faces = 0
    for image_id in probe_ids:
        results = tracker.results.get(image_id, {})
        faces += len(results)
        cands = [
            {"face_index": fi, "subject_id": c["subject_id"], "score": c["score"], "rank": c["rank"]}
            for (iid, fi), d in sorted(tracker.webhooks.items())
            if iid == image_id
            for c in d.event["candidates"]
        ]
        if image_id in tracker.dead:
            status = "dead_letter"
        elif image_id in tracker.no_face:
            status, no_face = "no_face", no_face + 1
        elif cands:
            status, matches = "match", matches + 1
        else:
            status, no_matches = "no_match", no_matches + 1
        entry: dict[str, Any] = {
            "path": str(paths[image_id].relative_to(probes)),
            "status": status,
            "candidates": cands,
        }
        if image_id in tracker.dead:
            entry["dead_letter"] = tracker.dead[image_id]
        per_probe.append(entry)
    gallery_outcomes = []
    for image_id in enrol_ids:
        outcome: dict[str, Any] = {"path": str(paths[image_id]), "status": "enrolled"}
        if image_id in tracker.dead:
            outcome = {**outcome, "status": "dead_letter", "reason": tracker.dead[image_id]}
        elif image_id in tracker.no_face:
            outcome["status"] = "no_face"
        gallery_outcomes.append(outcome)
    return {
        "totals": {
            "gallery_images": len(enrol_ids),
            "enrolled": sum(
                1 for i in enrol_ids if any(r["status"] == "enrolled" for r in tracker.results[i].values())
            ),
            "probes": len(probe_ids),
            "faces": faces,
            "matches": matches,
            "no_matches": no_matches,
            "no_face": no_face,
            "dead_letters": len(tracker.dead),
            "probe_dead_letters": sum(1 for i in probe_ids if i in tracker.dead),
            "webhooks": len(receiver.deliveries),
            "webhook_signature_failures": receiver.rejected,
            "duplicate_webhooks": receiver.duplicates,
        },
        "timings": {
            "seconds": round(elapsed, 3),
            "images_per_second": round(len(probe_ids) / elapsed, 2),
            "seconds_per_stage": _stage_seconds(tracker, probe_ids, delivered_at),
        },
        "gallery": gallery_outcomes,
        "probes": per_probe,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    t, tm = summary["totals"], summary["timings"]
    print("\nsummary")
    print(f"  gallery photos enrolled  {t['enrolled']} / {t['gallery_images']}")
    print(f"  probe images             {t['probes']}  (faces searched {t['faces']})")
    print(
        f"  matches                  {t['matches']}  (webhooks {t['webhooks']}, all signatures verified: "
        f"{t['webhook_signature_failures'] == 0}, duplicates {t['duplicate_webhooks']})"
    )
    print(f"  probe crops              {t['probe_crops_fetched']} of {t['webhooks']} fetched through signed links")
    print(f"  no match                 {t['no_matches']}")
    print(f"  no usable face           {t['no_face']}")
    refused, probes = t["dead_letters"] - t["probe_dead_letters"], t["probe_dead_letters"]
    print(f"  dead letters             {t['dead_letters']}  (enrolments refused {refused}, probes {probes})")
    print(f"  images per second        {tm['images_per_second']}  ({t['probes']} probes in {tm['seconds']} s)")
    stages = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in tm["seconds_per_stage"].items())
    print(f"  seconds per stage        {stages}")
    a = summary["audit"]
    sealed = f"{a['checkpoints']} signed checkpoints"
    print(f"  audit chain              {a['entries']} entries, {sealed}, verified: {a['verified']}")
    print("  every match is a candidate for human review, not an identification")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--gallery", type=Path, help="DIR/<subject>/<image>: enrolled (default: samples/gallery)")
    p.add_argument("--probes", type=Path, help="every image below is submitted (default: samples/probes)")
    p.add_argument("--report", type=Path, help="write a JSON report here")
    p.add_argument("--quiet", action="store_true", help="do not print each match")
    args = p.parse_args(argv)
    gallery = (args.gallery or SAMPLES / "gallery").resolve()
    probes = (args.probes or SAMPLES / "probes").resolve()
    for folder in (gallery, probes):
        if not folder.is_dir():
            print(f"not a folder: {folder}", file=sys.stderr)
            return 2
    broker = load_settings()
    started_kafka = local_broker("status", broker) != 0
    if started_kafka and local_broker("up", broker) != 0:
        print("could not start Kafka", file=sys.stderr)
        return 1
    try:
        summary = asyncio.run(run_demo(gallery, probes, args.quiet))
    finally:
        if started_kafka:
            local_broker("down", broker)
    if args.report is not None:
        args.report.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
