"""`facestream dlq list|replay`: the pipeline's dead letters, and sending them through again.

A letter names the record it is about (topic, partition, offset), never carries its value (images,
face pixels and embeddings stay out of the dead letters). A replay reads the original record back
from that topic and publishes it there again (value, key and headers), so the stage that refused it
tries again; ids are deterministic, so whatever the first try already produced is not duplicated
downstream. A record the topic no longer holds (its transit retention passed) or a tombstone
cannot be replayed; those are counted."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
from aiokafka import TopicPartition

from facestream import audit
from facestream.config import Settings, load_settings
from facestream.contracts.timeutil import now_iso, parse_iso
from facestream.io.kafka import consumer, producer, read_topic, running


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


async def originals(settings: Settings, letters: list[dict[str, Any]]) -> dict[str, Any]:
    """Each letter's original record (by the letter's event id), read back from its source topic
    at its offset; missing from the result when the topic no longer holds it (its retention has
    passed, or it was compacted away)."""
    wanted: dict[TopicPartition, dict[int, str]] = {}
    for letter in letters:
        tp = TopicPartition(letter["source_topic"], letter["partition"])
        wanted.setdefault(tp, {})[letter["offset"]] = letter["event_id"]
    found: dict[str, Any] = {}
    if not wanted:
        return found
    async with running(consumer(settings)) as cons:
        cons.assign(list(wanted))
        starts = await cons.beginning_offsets(list(wanted))
        ends = await cons.end_offsets(list(wanted))
        for tp, by_offset in wanted.items():
            for offset in sorted(by_offset):
                if not starts[tp] <= offset < ends[tp]:
                    continue
                cons.seek(tp, offset)
                records: list[Any] = []
                for _ in range(20):  # a fetch may come back empty while the broker reads the segment
                    records = (await cons.getmany(tp, timeout_ms=500, max_records=1)).get(tp, [])
                    if records:
                        break
                if records and records[0].offset == offset:
                    found[by_offset[offset]] = records[0]
    return found


async def replay(settings: Settings, letters: list[dict[str, Any]], dry_run: bool) -> tuple[int, int]:
    """Publish each letter's original record (value, key and headers, read back from its source
    topic) to that topic again; (replayed, no longer held or not ours)."""
    mine = f"{settings.topic_prefix}."
    ours = [x for x in letters if x["source_topic"].startswith(mine)]
    held = await originals(settings, ours)
    sendable = [held[x["event_id"]] for x in ours if x["event_id"] in held and held[x["event_id"]].value is not None]
    if not dry_run and sendable:
        replayed = [x["event_id"] for x in ours if x["event_id"] in held]
        entry = audit.entry(
            "replay",
            audit.cli_actor(),
            "dlq",
            f"dlq/{now_iso()}/{','.join(replayed)}",
            details={"replayed": len(sendable), "of": "pipeline dead letters"},
        )
        async with running(producer(settings)) as prod:
            await audit.send(settings, prod, entry)
            futures = [await prod.send(r.topic, r.value, key=r.key, headers=list(r.headers or ())) for r in sendable]
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
    print(f"{verb} {sent} dead letters to their source topics; {unsendable} no longer held there (or tombstones)")
    return 0
