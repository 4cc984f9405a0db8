"""`facestream`: the command line.

facestream kafka up|down|status        local single-node Kafka (KRaft) on 127.0.0.1
facestream run [--service NAME ...]    the four services in one process, or some of them
facestream enroll ...                  enrol photos of one subject (consent record required)
facestream submit ...                  submit photos for search (purpose, case, requester)
facestream tail [TOPIC]                print events from matches (default) or dlq
facestream subscriptions add|list|update|disable|enable|rotate-secret|remove NAME ...
facestream deliveries list|replay      the webhook delivery log; replay a subscriber's dead letters
facestream demo [--gallery DIR --probes DIR --report FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from facestream import client
from facestream.app import SERVICES
from facestream.cli_webhooks import add_parsers
from facestream.config import load_settings
from facestream.kafka import consumer, producer

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def _images(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p])
    return found


async def _publish_all(settings: Any, events: list[dict[str, Any]]) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        futures = [await client.publish(prod, settings, e) for e in events]
        await asyncio.gather(*futures)
    finally:
        await prod.stop()
    for e in events:
        print(f"submitted {e['image_id']} ({e['intent']['kind']})")


def _cmd_enroll(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    intent = client.enroll_intent(
        args.subject,
        args.watchlist,
        lawful_basis=args.lawful_basis,
        consent_ref=args.consent_ref,
        retain_until=args.retain_until,
        source_attestation=args.source_attestation,
        enrolled_by=args.enrolled_by,
    )
    events = [
        client.submission(f"enrol-{uuid.uuid4().hex[:12]}", client.image_ref(p, settings), intent, args.source)
        for p in _images(args.images)
    ]
    asyncio.run(_publish_all(settings, events))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    intent = client.search_intent(args.purpose, args.case_ref, args.requester, args.watchlist or None)
    events = [
        client.submission(f"img-{uuid.uuid4().hex[:12]}", client.image_ref(p, settings), intent, args.source)
        for p in _images(args.images)
    ]
    asyncio.run(_publish_all(settings, events))
    return 0


def summarise(event: dict[str, Any]) -> dict[str, Any]:
    """An event without biometric or bulky fields, for printing."""
    hidden = {"embedding", "aligned", "payload_b64", "landmarks", "intent"}
    return {k: v for k, v in event.items() if k not in hidden}


async def _tail(settings: Any, topic: str, follow: bool) -> None:
    cons = consumer(settings, topic)
    await cons.start()
    try:
        while True:
            batch = await cons.getmany(timeout_ms=1000)
            if not batch and not follow:
                return
            for records in batch.values():
                for r in records:
                    print(orjson.dumps(summarise(orjson.loads(r.value))).decode(), flush=True)
    finally:
        await cons.stop()


def _cmd_tail(args: argparse.Namespace) -> int:
    asyncio.run(_tail(load_settings(args.config), args.topic, args.follow))
    return 0


async def _lag(settings: Any, watch: float | None) -> None:
    from facestream.lag import consumer_lag, table

    while True:
        rows = await consumer_lag(settings)
        if watch:
            print("\033[2J\033[H", end="")
        print(table(rows), flush=True)
        if not watch:
            return
        await asyncio.sleep(watch)


def _cmd_lag(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_lag(load_settings(args.config), args.watch))
    return 0


async def _status(settings: Any, window_s: float) -> str:
    from collections import Counter

    from aiokafka import TopicPartition

    from facestream.kafka import TOPICS, topic_partitions
    from facestream.lag import consumer_lag

    known = await topic_partitions(settings, [settings.topic(name) for name in TOPICS])
    parts = [TopicPartition(topic, p) for topic, numbers in known.items() for p in numbers]
    probe = consumer(settings)
    await probe.start()
    try:
        before = await probe.end_offsets(parts)
        await asyncio.sleep(window_s)
        after = await probe.end_offsets(parts)
    finally:
        await probe.stop()
    rate: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for tp in parts:
        rate[tp.topic] += after[tp] - before[tp]
        total[tp.topic] += after[tp]
    lag_by_group: Counter[str] = Counter()
    for row in await consumer_lag(settings):
        lag_by_group[f"{row.group} on {row.topic}"] += row.lag
    dead: Counter[str] = Counter()
    cons = consumer(settings, "dlq")
    await cons.start()
    try:
        while batch := await cons.getmany(timeout_ms=500):
            for records in batch.values():
                for r in records:
                    letter = orjson.loads(r.value)
                    dead[f"{letter['stage']}: {letter['reason']}"] += 1
    finally:
        await cons.stop()
    lines = [f"throughput over {window_s:.0f} s (events/s) and totals per topic:"]
    for name in TOPICS:
        topic = settings.topic(name)
        lines.append(f"  {topic:40s} {rate[topic] / window_s:8.1f}/s {total[topic]:10d} events")
    lines.append("consumer lag:")
    lines += [f"  {key:60s} {value:8d}" for key, value in sorted(lag_by_group.items())] or ["  (no consumer groups)"]
    lines.append("dead letters by stage and reason:")
    lines += [f"  {key:60s} {value:8d}" for key, value in sorted(dead.items())] or ["  none"]
    from services.notifier.admin import delivery_log

    outcomes = Counter(f"{e['subscription']}: {e['outcome']}" for e in await delivery_log(settings))
    lines.append("webhook deliveries by subscription and outcome (from the delivery log):")
    lines += [f"  {key:60s} {value:8d}" for key, value in sorted(outcomes.items())] or ["  none"]
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    print(asyncio.run(_status(load_settings(args.config), args.window)))
    return 0


def _cmd_kafka(args: argparse.Namespace) -> int:
    from facestream.kafka import ensure_topics
    from facestream.worker import kafka

    rc = kafka(args.action)
    if rc == 0 and args.action == "up":
        created = asyncio.run(ensure_topics(load_settings(args.config)))
        print(f"topics: {len(created)} created")
    return rc


def _cmd_run(args: argparse.Namespace) -> int:
    from facestream.worker import run

    run(load_settings(args.config), args.service or SERVICES, args.log_level)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from facestream.demo import main as demo_main

    return demo_main(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="facestream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="TOML settings file (default: $FACESTREAM_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("kafka", help="local Kafka broker")
    k.add_argument("action", choices=["up", "down", "status", "fetch", "reset"])
    k.set_defaults(func=_cmd_kafka)

    r = sub.add_parser("run", help="run services")
    r.add_argument("--service", action="append", choices=SERVICES, help="repeatable; default all four")
    r.add_argument("--log-level", default="INFO")
    r.set_defaults(func=_cmd_run)

    e = sub.add_parser("enroll", help="enrol photos of one subject")
    e.add_argument("images", nargs="+")
    e.add_argument("--subject", required=True)
    e.add_argument("--watchlist", required=True)
    e.add_argument(
        "--lawful-basis",
        required=True,
        choices=[
            "explicit_consent",
            "legal_obligation",
            "vital_interests",
            "public_task",
            "law_enforcement",
            "legal_claims",
        ],
    )
    e.add_argument("--consent-ref", required=True)
    e.add_argument("--retain-until", required=True, help="YYYY-MM-DD")
    e.add_argument("--source-attestation", required=True)
    e.add_argument("--enrolled-by", required=True)
    e.add_argument("--source", default="cli")
    e.set_defaults(func=_cmd_enroll)

    s = sub.add_parser("submit", help="submit photos for search")
    s.add_argument("images", nargs="+")
    s.add_argument("--purpose", required=True)
    s.add_argument("--case-ref", required=True)
    s.add_argument("--requester", required=True)
    s.add_argument("--watchlist", action="append")
    s.add_argument("--source", default="cli")
    s.set_defaults(func=_cmd_submit)

    t = sub.add_parser("tail", help="print events")
    t.add_argument("topic", nargs="?", default="matches", choices=["images", "faces", "embeddings", "matches", "dlq"])
    t.add_argument("-f", "--follow", action="store_true")
    t.set_defaults(func=_cmd_tail)

    lag = sub.add_parser("lag", help="consumer lag per group, topic and partition, from the broker")
    lag.add_argument("--watch", type=float, nargs="?", const=2.0, help="refresh every N seconds (default 2)")
    lag.set_defaults(func=_cmd_lag)

    st = sub.add_parser("status", help="throughput, lag and dead letters per stage")
    st.add_argument("--window", type=float, default=2.0, help="seconds over which throughput is measured")
    st.set_defaults(func=_cmd_status)

    add_parsers(sub)

    d = sub.add_parser("demo", help="the whole pipeline on sample photos")
    d.add_argument("--gallery", type=Path, help="DIR/<subject>/<image>: enrolled (default: samples/gallery)")
    d.add_argument("--probes", type=Path, help="every image below is submitted (default: samples/probes)")
    d.add_argument("--report", type=Path, help="write a JSON report here")
    d.add_argument("--quiet", action="store_true", help="do not print each match")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
