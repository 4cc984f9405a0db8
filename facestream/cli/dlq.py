"""`facestream dlq list|replay`: the pipeline's dead letters, and sending them through again.

A replay publishes the original record (its value, key and trace id, kept in the letter) to the
topic it came from, so the stage that refused it tries again; ids are deterministic, so whatever
the first try already produced is not duplicated downstream. Letters without their payload (a
tombstone, or a letter that had to be sent without it) cannot be replayed and are counted."""

from __future__ import annotations

import argparse
import asyncio
import base64
from typing import Any

import orjson

from facestream.config import Settings, load_settings
from facestream.contracts.timeutil import parse_iso
from facestream.io.kafka import producer, read_topic, running


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("dlq", help="the pipeline's dead letters: list them, send them through again")
    d.add_argument("action", choices=["list", "replay"])
    d.add_argument("--stage", choices=["detector", "embedder", "matcher", "notifier"])
    d.add_argument("--reason", action="append", help="repeatable (see contracts/dead.letter.schema.json)")
    d.add_argument("--image-id", action="append", help="repeatable")
    d.add_argument("--transient", action="store_true", help="only failures that may pass (servers away, timeouts)")
    d.add_argument("--since", help="only letters from this time on (ISO 8601, e.g. 2026-12-01T10:00:00Z)")
    d.add_argument("--limit", type=int, default=100, help="list: the last N (default 100)")
    d.add_argument("--dry-run", action="store_true", help="replay: say what would be sent, send nothing")
    d.set_defaults(func=_cmd_dlq)


def _matches(letter: dict[str, Any], args: argparse.Namespace) -> bool:
    return (
        (args.stage is None or letter["stage"] == args.stage)
        and (not args.reason or letter["reason"] in args.reason)
        and (not args.image_id or letter.get("image_id") in args.image_id)
        and (not args.transient or bool(letter.get("transient")))
        and (args.since is None or parse_iso(letter["occurred_at"]) >= parse_iso(args.since))
    )


async def dead_letters(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    letters = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("dlq"))]
    return sorted((x for x in letters if _matches(x, args)), key=lambda x: x["occurred_at"])


async def replay(settings: Settings, letters: list[dict[str, Any]], dry_run: bool) -> tuple[int, int]:
    """Publish each letter's original record to its source topic; (replayed, without payload)."""
    mine = f"{settings.topic_prefix}."
    sendable = [x for x in letters if x["payload_b64"] and x["source_topic"].startswith(mine)]
    if not dry_run and sendable:
        async with running(producer(settings)) as prod:
            futures = []
            for letter in sendable:
                headers = [("trace-id", letter["trace_id"].encode())] if letter.get("trace_id") else []
                key = letter["key"].encode() if letter.get("key") is not None else None
                value = base64.b64decode(letter["payload_b64"])
                futures.append(await prod.send(letter["source_topic"], value, key=key, headers=headers))
            await asyncio.gather(*futures)
    return len(sendable), len(letters) - len(sendable)


def _cmd_dlq(args: argparse.Namespace) -> int:
    if args.since is not None:
        parse_iso(args.since)  # a malformed time is a usage error here, not mid-run
    settings = load_settings(args.config)
    letters = asyncio.run(dead_letters(settings, args))
    if args.action == "list":
        print("{:24s} {:9s} {:24s} {:5s} {:40s} detail".format("at", "stage", "reason", "again", "image id"))
        for x in letters[-args.limit :]:
            again = "yes" if x.get("transient") else "no"
            image = (x.get("image_id") or "-")[:40]
            print(f"{x['occurred_at']:24s} {x['stage']:9s} {x['reason']:24s} {again:5s} {image:40s} {x['detail'][:80]}")
        print(f"{len(letters)} dead letters")
        return 0
    sent, unsendable = asyncio.run(replay(settings, letters, args.dry_run))
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {sent} dead letters to their source topics; {unsendable} without a payload to replay")
    return 0
