"""`facestream gallery ...`: what the gallery holds, read from its system of record (the gallery
topic), never from one replica's index (vectors are never printed); erasure and its receipts; what
is held about one person (`export`, for an access request)."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import orjson

from facestream import audit, contracts
from facestream.config import Settings, load_settings
from facestream.contracts.timeutil import now_iso, parse_iso
from facestream.errors import UsageError
from facestream.io.kafka import producer, read_topic, running, topic_partitions
from facestream.services.matcher.eraser import receipts, verify
from facestream.services.matcher.keys import gallery_keys


async def read_gallery(settings: Settings) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The gallery's points now, by point id: the topic applied in order (tombstones and erasures
    remove), each without its (encrypted) embedding, naming its data key instead; and the erasure
    records the topic keeps."""
    held: dict[str, dict[str, Any]] = {}
    erasures: list[dict[str, Any]] = []
    topic = settings.topic("gallery")
    if topic not in await topic_partitions(settings, [topic]):  # a missing gallery is not an empty one
        raise UsageError(
            f"there is no gallery topic {topic} on {settings.kafka_bootstrap}: no matcher has run with "
            f"topic_prefix {settings.topic_prefix!r} there (start the pipeline with `facestream run`)"
        )
    for record in await read_topic(settings, topic):
        key = record.key.decode() if record.key else ""
        if record.value is None:
            held.pop(key, None)
            continue
        event = orjson.loads(record.value)
        if event.get("event_type") == "gallery.erasure":
            erasures.append(event)
            erased = parse_iso(event["requested_at"])
            for point_id, point in list(held.items()):
                submitted = parse_iso(point.get("submitted_at") or point["enrolled_at"])
                if point["subject_id"] == event["subject_id"] and submitted <= erased:
                    del held[point_id]
            continue
        sealed = event.pop("embedding_enc", {})  # biometric data, even encrypted: never shown
        event["data_key_id"] = sealed.get("key_id")
        held[key] = event
    return held, erasures


async def points(settings: Settings) -> dict[str, dict[str, Any]]:
    return (await read_gallery(settings))[0]


async def export(settings: Settings, subject: str) -> dict[str, Any]:
    """What the platform holds about `subject`, for an access request: its gallery points (what
    was enrolled, when, by whom, under which consent record), its data keys, erasures and their
    receipt, and which subscribers were sent matches naming it. The face templates themselves are
    described, not exported: they are held only encrypted, and only the matcher decrypts them."""
    held, erasures = await read_gallery(settings)
    mine = sorted((p for p in held.values() if p["subject_id"] == subject), key=lambda p: p["enrolled_at"])
    live_keys: dict[str, bytes | None] = {}
    for record in await read_topic(settings, settings.topic("gallery.keys")):
        name = record.key.decode() if record.key else ""
        if name.rpartition("/")[0] == subject:
            live_keys[name.rpartition("/")[2]] = record.value
    sent: dict[str, dict[str, Any]] = {}
    for record in await read_topic(settings, settings.topic("deliveries.subjects")):
        name = record.key.decode() if record.key else ""
        if name.rpartition("/")[2] != subject:
            continue
        if record.value is None:
            sent.pop(name, None)
        else:
            sent[name] = orjson.loads(record.value)
    receipt = (await receipts(settings)).get(subject)
    theirs = [e for e in erasures if e["subject_id"] == subject]
    if not mine and not theirs and receipt is None and not sent:
        raise UsageError(f"nothing is held about {subject!r}: no gallery point, erasure or notified subscriber")
    return {
        "subject_id": subject,
        "exported_at": now_iso(),
        "points": [
            {
                **{k: v for k, v in p.items() if k not in ("schema_version", "event_type")},
                "embedding": f"a {p['model']['name']} face template, held encrypted with data key "
                f"{p['data_key_id']}; not exported",
            }
            for p in mine
        ],
        "data_keys": sorted(k for k, v in live_keys.items() if v is not None),
        "erasures": theirs,
        "erasure_receipt": receipt,
        "subscribers_sent_matches": sorted(
            (
                {"subscription": e["subscription"], "latest_match_event_id": e["event_id"], "at": e["at"]}
                for e in sent.values()
            ),
            key=lambda e: str(e["subscription"]),
        ),
        "transit_copies": f"photos, faces and embeddings submitted stay in the transit topics at most "
        f"{settings.transit_retention_hours:g} hours",
    }


def by_subject(held: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    subjects: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in held.values():
        subjects[point["subject_id"]].append(point)
    return dict(sorted(subjects.items()))


def subjects(held: dict[str, dict[str, Any]], watchlist: str | None = None) -> list[dict[str, Any]]:
    """One line per enrolled subject (in `watchlist`, if given): its points, watchlists, retention."""
    out = []
    for subject, pts in by_subject(held).items():
        lists = sorted({p["watchlist"] for p in pts})
        if watchlist and watchlist not in lists:
            continue
        retain = min(p["consent"]["retain_until"] for p in pts)
        out.append({"subject_id": subject, "points": len(pts), "watchlists": lists, "retain_until": retain})
    return out


def _list(held: dict[str, dict[str, Any]], watchlist: str | None) -> str:
    lines = [
        f"{s['subject_id']:32s} points={s['points']:<3d} watchlists={','.join(s['watchlists'])} "
        f"retain_until={s['retain_until']}"
        for s in subjects(held, watchlist)
    ]
    return "\n".join(lines) or "no subjects"


def _show(held: dict[str, dict[str, Any]], subject: str) -> str:
    pts = by_subject(held).get(subject)
    if not pts:
        raise UsageError(f"no subject {subject!r} in the gallery")
    lines = [f"subject {subject}: {len(pts)} points"]
    for p in sorted(pts, key=lambda p: p["enrolled_at"]):
        consent = p["consent"]
        lines.append(
            f"  point {p['point_id']} watchlist={p['watchlist']} image={p['image_id']} model={p['model']['name']}/"
            f"{p['model']['version']} enrolled_at={p['enrolled_at']}\n"
            f"    consent: basis={consent['lawful_basis']} ref={consent['consent_ref']} "
            f"retain_until={consent['retain_until']} enrolled_by={consent['enrolled_by']} "
            f"source={consent['source_attestation']!r}"
        )
    return "\n".join(lines)


def _stats(held: dict[str, dict[str, Any]]) -> str:
    subjects = by_subject(held)
    lists = Counter(p["watchlist"] for p in held.values())
    lines = [f"subjects {len(subjects)}", f"points {len(held)}"]
    lines += [f"watchlist {name:24s} points={n}" for name, n in sorted(lists.items())]
    return "\n".join(lines)


def _show_receipt(receipt: dict[str, Any], settings: Settings) -> str:
    valid = verify(receipt, gallery_keys(settings, create=False))
    state = "valid" if valid else "INVALID (changed since it was signed, or signed with another gallery key)"
    return orjson.dumps(receipt, option=orjson.OPT_INDENT_2).decode() + f"\nsignature: {state}"


async def request_erasure(
    settings: Settings, subject: str, reason: str, requested_by: str, actor: str
) -> dict[str, Any]:
    """Ask the matchers to erase `subject` (a subject.erasure_requested on gallery.requests),
    audited as asked by `actor`."""
    request: dict[str, Any] = {
        "schema_version": 1,
        "event_type": "subject.erasure_requested",
        "request_id": uuid.uuid4().hex,
        "subject_id": subject,
        "reason": reason,
        "requested_by": requested_by,
        "requested_at": now_iso(),
    }
    contracts.validate("subject.erasure_requested", request)
    entry = audit.entry(
        "erasure_requested",
        actor,
        "matcher",
        request["request_id"],
        details={"reason": reason, "requested_by": requested_by},
        subject_id=subject,
    )
    async with running(producer(settings)) as prod:
        await audit.send(settings, prod, entry)
        topic = settings.topic("gallery.requests")
        await prod.send_and_wait(topic, contracts.dumps(request), key=subject.encode())
    return request


async def receipt_for(settings: Settings, request: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
    """The receipt of erasure `request`, waiting up to `wait_s` for it; None if not yet there."""
    deadline = time.monotonic() + wait_s
    while True:
        receipt = (await receipts(settings)).get(request["subject_id"])
        if receipt is not None and receipt["request_id"] == request["request_id"]:
            return receipt
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.5)


async def _erase(settings: Settings, args: argparse.Namespace) -> str:
    held = by_subject(await points(settings))
    done = (await receipts(settings)).get(args.subject)
    if args.subject not in held:
        if done is not None:  # erasing twice: the same receipt
            return "already erased:\n" + _show_receipt(done, settings)
        raise UsageError(f"no subject {args.subject!r} in the gallery (nothing to erase)")
    request = await request_erasure(settings, args.subject, args.reason, args.requested_by, audit.cli_actor())
    receipt = await receipt_for(settings, request, args.wait)
    if receipt is not None:
        return _show_receipt(receipt, settings)
    raise UsageError(
        f"erasure {request['request_id']} requested; no receipt within {args.wait:.0f} s (is a matcher running?): "
        f"`facestream gallery receipt {args.subject}` shows it when it is done"
    )


def _cmd_gallery(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.action in ("show", "erase", "receipt", "export") and not args.subject:
        raise UsageError(f"facestream gallery {args.action}: SUBJECT is required")
    if args.action == "erase":
        if not args.reason or not args.requested_by:
            raise UsageError("facestream gallery erase: --reason and --requested-by are required")
        print(asyncio.run(_erase(settings, args)))
        return 0
    if args.action == "receipt":
        receipt = asyncio.run(receipts(settings)).get(args.subject)
        if receipt is None:
            raise UsageError(f"no erasure receipt for {args.subject!r}")
        print(_show_receipt(receipt, settings))
        return 0
    if args.action == "export":
        print(orjson.dumps(asyncio.run(export(settings, args.subject)), option=orjson.OPT_INDENT_2).decode())
        return 0
    held = asyncio.run(points(settings))
    if args.action == "list":
        print(_list(held, args.watchlist))
    elif args.action == "show":
        print(_show(held, args.subject))
    else:
        print(_stats(held))
    return 0


def add_parsers(sub: Any) -> None:
    """Register the `gallery` command on the main parser."""
    g = sub.add_parser("gallery", help="the enrolled subjects (read from the gallery topic)")
    g.add_argument("action", choices=["list", "show", "stats", "erase", "receipt", "export"])
    g.add_argument("subject", nargs="?")
    g.add_argument("--watchlist", help="list: only subjects on this watchlist")
    g.add_argument("--reason", help="erase: why (an access request, consent withdrawn, ...)")
    g.add_argument("--requested-by", help="erase: who asks")
    g.add_argument("--wait", type=float, default=60.0, help="erase: seconds to wait for the receipt")
    g.set_defaults(func=_cmd_gallery)
