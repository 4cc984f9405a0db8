"""`facestream gallery ...`: what the gallery holds, read from its system of record (the gallery
topic), never from one replica's index. Vectors are never printed."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter, defaultdict
from typing import Any

import orjson

from facestream.config import Settings, load_settings
from facestream.io.kafka import read_topic


async def points(settings: Settings) -> dict[str, dict[str, Any]]:
    """The gallery's points now, by point id: the topic applied in order (tombstones remove)."""
    held: dict[str, dict[str, Any]] = {}
    for record in await read_topic(settings, settings.topic("gallery")):
        key = record.key.decode() if record.key else ""
        if record.value is None:
            held.pop(key, None)
        else:
            point = orjson.loads(record.value)
            point.pop("embedding", None)  # biometric data: never shown
            held[key] = point
    return held


def by_subject(held: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    subjects: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in held.values():
        subjects[point["subject_id"]].append(point)
    return dict(sorted(subjects.items()))


def _list(held: dict[str, dict[str, Any]], watchlist: str | None) -> str:
    lines = []
    for subject, pts in by_subject(held).items():
        lists = sorted({p["watchlist"] for p in pts})
        if watchlist and watchlist not in lists:
            continue
        retain = min(p["consent"]["retain_until"] for p in pts)
        lines.append(f"{subject:32s} points={len(pts):<3d} watchlists={','.join(lists)} retain_until={retain}")
    return "\n".join(lines) or "no subjects"


def _show(held: dict[str, dict[str, Any]], subject: str) -> str:
    pts = by_subject(held).get(subject)
    if not pts:
        raise SystemExit(f"facestream gallery show: no subject {subject!r} in the gallery")
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


def _cmd_gallery(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    held = asyncio.run(points(settings))
    if args.action == "list":
        print(_list(held, args.watchlist))
    elif args.action == "show":
        if not args.subject:
            raise SystemExit("facestream gallery show: SUBJECT is required")
        print(_show(held, args.subject))
    else:
        print(_stats(held))
    return 0


def add_parsers(sub: Any) -> None:
    """Register the `gallery` command on the main parser."""
    g = sub.add_parser("gallery", help="the enrolled subjects (read from the gallery topic)")
    g.add_argument("action", choices=["list", "show", "stats"])
    g.add_argument("subject", nargs="?")
    g.add_argument("--watchlist", help="list: only subjects on this watchlist")
    g.set_defaults(func=_cmd_gallery)
