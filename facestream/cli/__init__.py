"""`facestream`: the command line.

facestream kafka up|down|status|fetch|reset   local single-node Kafka (KRaft) on 127.0.0.1
facestream kafka topics|acls           on any cluster: make every topic; a service principal's ACLs
facestream run [--service NAME ...]    the four stages, the API and the audit sequencer in one process, or some
facestream enroll ...                  enrol photos of one subject (consent record required)
facestream submit ...                  submit photos for search (purpose, case, requester)
facestream tail [TOPIC] [-f]           the last events of matches (default) or another topic; -f follows
facestream lag [--watch] [--all]       the groups that lag (retries scheduled apart)
facestream status                      throughput, lag and dead letters per stage, webhook outcomes
facestream config show|check           the effective settings and where each comes from; validate a file
facestream dlq list|replay             the pipeline's dead letters, filtered; send them through again
and the services' own commands (the matcher's `gallery`, the notifier's `subscriptions` and
`deliveries`, `tokens`, `audit`, `report`, `review`), and `calibrate` (services/calibrate.py: the
threshold from your labelled photos).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from facestream import client
from facestream.cli.dlq import add_parsers as add_dlq_parsers
from facestream.config import Settings, describe, load_settings
from facestream.contracts.consent import consent_problem, retention_ends
from facestream.errors import ConfigError, ModelError, RejectedEvent, UsageError
from facestream.io.acls import Acl, acl_set, create_acls
from facestream.io.broker import local_broker
from facestream.io.kafka import TOPICS, consumer, ensure_topics, producer, running, topic_partitions
from facestream.ops.lag import consumer_lag, pipeline_groups, table
from facestream.runtime.app import consumer_groups, leader_topic
from facestream.runtime.service import Service, own_topics, runnable, scheduled_topics
from facestream.runtime.worker import run

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def _images(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UsageError(f"no such file or folder: {p}")
        found.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p])
    if not found:
        raise UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(paths)}")
    return found


def _term(value: str) -> str:
    """A retention term, for argparse: a date (YYYY-MM-DD) or an RFC 3339 time with its offset; a
    malformed one is a usage error, not a traceback."""
    try:
        retention_ends(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a date (YYYY-MM-DD) nor a time with its offset"
        ) from None
    return value


def _interval(value: str) -> float:
    """A positive number of seconds, for argparse."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds above 0")
    return seconds


def _count(value: str) -> int:
    """A whole number from 0 up, for argparse."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number from 0 up")
    return int(value)


def _fractions(count: int) -> Callable[[str], list[float]]:
    """`count` comma-separated fractions of the photo's sides (0 to 1), for argparse."""

    def parse(value: str) -> list[float]:
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) != count or not all(0 <= n <= 1 for n in numbers):
            raise argparse.ArgumentTypeError(f"{value!r}: expected {count} comma-separated fractions from 0 to 1")
        return numbers

    return parse


async def _publish_all(settings: Any, events: list[dict[str, Any]]) -> None:
    async with running(producer(settings)) as prod:
        futures = [await client.publish(prod, settings, e) for e in events]
        await asyncio.gather(*futures)
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
        face_hint={"point": args.face_at} if args.face_at else {"box": args.face_box} if args.face_box else None,
    )
    problem = consent_problem(intent["consent"], settings.max_retention_days)
    if problem is not None:
        raise UsageError(f"cannot enrol: {problem}")
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


HIDDEN = {"embedding", "aligned", "payload_b64", "data_b64", "landmarks", "intent"}  # biometric or bulky


def summarise(event: Any) -> Any:
    """An event without biometric or bulky fields at any depth (an inline image's `data_b64`
    sits inside `image`), for printing."""
    if isinstance(event, dict):
        return {k: summarise(v) for k, v in event.items() if k not in HIDDEN}
    if isinstance(event, list):
        return [summarise(v) for v in event]
    return event


async def _tail(settings: Settings, topic: str, follow: bool, lines: int | None, from_beginning: bool) -> None:
    """Print the topic's events: from its beginning, or its last `lines` (default: 10, or none
    with `follow`, as `tail -f` shows only what comes), then, following, each new one."""
    async with running(consumer(settings)) as cons:
        parts = [TopicPartition(settings.topic(topic), p) for p in await _partitions(settings, topic)]
        cons.assign(parts)
        ends = await cons.end_offsets(parts)
        starts = await cons.beginning_offsets(parts)
        last = (0 if follow else 10) if lines is None else lines
        if from_beginning:
            await cons.seek_to_beginning(*parts)
        else:  # up to `last` per partition, the last `last` of them all by time printed
            for tp in parts:
                cons.seek(tp, max(starts[tp], ends[tp] - last))
        backlog = []
        while [tp for tp in parts if await cons.position(tp) < ends[tp]]:
            for records in (await cons.getmany(timeout_ms=1000)).values():
                backlog += [r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)]]
        backlog.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
        for r in backlog if from_beginning else backlog[len(backlog) - last :] if last else []:
            _print_event(r.value)
        if not follow:
            return
        for tp in parts:  # what the backlog read past its end offsets comes again, once
            cons.seek(tp, ends[tp])
        print(f"following {settings.topic(topic)} (Ctrl-C stops)", file=sys.stderr, flush=True)
        while True:
            for records in (await cons.getmany(timeout_ms=1000)).values():
                for r in records:
                    _print_event(r.value)


async def _partitions(settings: Settings, topic: str) -> list[int]:
    known = await topic_partitions(settings, [settings.topic(topic)])
    if settings.topic(topic) not in known:
        where = f"{settings.topic(topic)} on {settings.kafka_bootstrap}"
        raise UsageError(f"no topic {where}: `facestream kafka up` makes the pipeline's topics")
    return known[settings.topic(topic)]


def _print_event(value: bytes) -> None:
    try:
        event = summarise(orjson.loads(value))
    except (orjson.JSONDecodeError, AttributeError):
        print(orjson.dumps({"unreadable_event_bytes": len(value)}).decode(), flush=True)
        return
    print(orjson.dumps(event).decode(), flush=True)


def _cmd_tail(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(load_settings(args.config), args.topic, args.follow, args.lines, args.from_beginning))
    return 0


def _known_groups(settings: Settings, services: Sequence[Service], found: list[str]) -> dict[str, list[str]]:
    """The topics each pipeline group on the broker reads, from its name: the all-in-one group,
    `<app_id>-<service>[-<service>...]` for workers running some services, and the services' own."""
    by_name = {s.name: s for s in services}
    known: dict[str, list[str]] = {}
    for group in found:
        names = group.removeprefix(f"{settings.app_id}-").split("-") if group != settings.app_id else list(by_name)
        chosen = [by_name[n] for n in names if n in by_name]
        if chosen and (group == settings.app_id or len(chosen) == len(names)):
            known.update(consumer_groups(settings, chosen, services))
    return {group: known.get(group, []) for group in found}


async def _lag(settings: Settings, services: Sequence[Service], watch: float | None, all_rows: bool) -> None:
    scheduled = scheduled_topics(settings, services)
    while True:
        groups = _known_groups(settings, services, await pipeline_groups(settings))
        rows = await consumer_lag(settings, groups, scheduled)
        if watch:
            print("\033[2J\033[H", end="")
        print(table(rows, all_rows), flush=True)
        if not watch:
            return
        await asyncio.sleep(watch)


def _cmd_lag(args: argparse.Namespace, services: Sequence[Service]) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_lag(load_settings(args.config), services, args.watch, args.all))
    return 0


async def _status(settings: Settings, services: Sequence[Service], window_s: float) -> str:
    known = await topic_partitions(settings, [settings.topic(name) for name in TOPICS])
    if settings.topic("dlq") not in known:
        raise UsageError(
            f"no pipeline topics with topic_prefix {settings.topic_prefix!r} on {settings.kafka_bootstrap}: "
            "`facestream kafka up` creates them, `facestream run` starts the pipeline"
        )
    parts = [TopicPartition(topic, p) for topic, numbers in known.items() for p in numbers]
    async with running(consumer(settings)) as probe:
        before = await probe.end_offsets(parts)
        await asyncio.sleep(window_s)
        after = await probe.end_offsets(parts)
    rate: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for tp in parts:
        rate[tp.topic] += after[tp] - before[tp]
        total[tp.topic] += after[tp]
    lag_by_group: Counter[str] = Counter()
    groups = _known_groups(settings, services, await pipeline_groups(settings))
    scheduled: Counter[str] = Counter()
    for row in await consumer_lag(settings, groups, scheduled_topics(settings, services)):
        lag_by_group[f"{row.group} on {row.topic}"] += row.behind
        if row.scheduled:
            scheduled[row.topic] += row.waiting
    dead: Counter[str] = Counter()
    async with running(consumer(settings, "dlq")) as cons:
        while batch := await cons.getmany(timeout_ms=500):
            for records in batch.values():
                for r in records:
                    letter = orjson.loads(r.value)
                    dead[f"{letter['stage']}: {letter['reason']}"] += 1
    lines = [f"throughput over {window_s:.0f} s (events/s) and totals per topic:"]
    for name in TOPICS:
        topic = settings.topic(name)
        lines.append(f"  {topic:40s} {rate[topic] / window_s:8.1f}/s {total[topic]:10d} events")
    lines.append("consumer lag:")
    lines += [f"  {key:60s} {value:8d}" for key, value in sorted(lag_by_group.items())] or ["  (no consumer groups)"]
    if scheduled:
        lines.append("webhook retries scheduled (waiting for their due time, not lag):")
        lines += [f"  {key:60s} {value:8d}" for key, value in sorted(scheduled.items())]
    lines.append("dead letters by stage and reason:")
    lines += [f"  {key:60s} {value:8d}" for key, value in sorted(dead.items())] or ["  none"]
    for service in services:
        if service.status is not None:
            lines += await service.status(settings)
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace, services: Sequence[Service]) -> int:
    print(asyncio.run(_status(load_settings(args.config), services, args.window)))
    return 0


def principal_acls(settings: Settings, chosen: Sequence[Service], catalogue: Sequence[Service]) -> list[Acl]:
    """The ACLs of a principal whose workers run `chosen` together (out of `catalogue`): its
    services' access, its consumer groups, and its app's leader topic (which its worker makes)."""
    groups = consumer_groups(settings, chosen, catalogue)
    leader = leader_topic(next(iter(groups)))
    own = [Acl("topic", leader, operation) for operation in ("create", "read", "write")]
    return sorted({*acl_set(settings, [s.access(settings) for s in chosen], groups), *own})


def _cmd_kafka(args: argparse.Namespace, services: Sequence[Service]) -> int:
    settings = load_settings(args.config)
    if args.action == "topics":  # an administrator's step on a cluster the services may not change
        created = asyncio.run(ensure_topics(settings, own_topics(settings, services)))
        print(f"topics: {len(created)} created ({settings.kafka_replication_factor} replicas each)")
        return 0
    if args.action == "acls":
        if not args.service or not args.principal:
            raise UsageError("kafka acls needs --service (repeatable: the services one worker runs) and --principal")
        chosen = [s for s in services if s.name in args.service]
        rules = principal_acls(settings, chosen, services)
        for rule in rules:
            print(rule.line(args.principal))
        if args.apply:
            count = asyncio.run(create_acls(settings, args.principal, rules))
            print(f"acls: {count} created for {args.principal}")
        return 0
    rc = local_broker(args.action, settings)
    if rc == 0 and args.action == "up":
        created = asyncio.run(ensure_topics(settings, own_topics(settings, services)))
        print(f"topics: {len(created)} created")
    return rc


def _cmd_run(args: argparse.Namespace, services: Sequence[Service]) -> int:
    workers = runnable(services)  # review only adds topics, commands and API operations
    chosen = [s for s in workers if s.name in args.service] if args.service else workers
    run(load_settings(args.config), chosen, services, args.log_level)
    return 0


def _cmd_config(args: argparse.Namespace, services: Sequence[Service]) -> int:
    if args.action == "check":
        path = args.file or args.config
        if not path:
            raise ConfigError("facestream config check FILE: name the settings file to check")
        # The file alone, as it would load anywhere: this machine's environment does not count.
        settings = load_settings(path, environment=False)
        for service in services:  # and what the services read at start (a calibration file)
            service.check(settings)
        print(f"{path}: valid")
        return 0
    path = args.file or args.config
    print("\n".join(describe(load_settings(path), path)))
    return 0


def parser(services: Sequence[Service], commands: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    """The `facestream` command for the pipeline made of `services`, with `commands` (each adds
    its subparser) that work across them."""
    names = [s.name for s in runnable(services)]
    p = argparse.ArgumentParser(
        prog="facestream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="TOML settings file (default: $FACESTREAM_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser(
        "kafka",
        help="local Kafka broker (up|down|status|fetch|reset); on any cluster: create the topics (topics), "
        "a service principal's ACLs (acls)",
        description="up, down, status: the local single-node broker on kafka_bootstrap's port (scripts/kafka.sh); "
        "fetch: its jars; reset: stop it and delete its data. "
        "topics: make every topic of the pipeline and the services with partitions, kafka_replication_factor and "
        "kafka_min_insync_replicas (an administrator's step on a secured cluster). "
        "acls --service S [--service T] --principal User:NAME [--apply]: the ACLs a principal whose workers run "
        "those services needs; printed, and with --apply created (with an administrator's settings, on brokers "
        "with an authorizer).",
    )
    k.add_argument("action", choices=["up", "down", "status", "fetch", "reset", "topics", "acls"])
    k.add_argument("--service", action="append", choices=names, help="acls: a service its workers run (repeatable)")
    k.add_argument("--principal", help="acls: the services' principal, User:NAME")
    k.add_argument("--apply", action="store_true", help="acls: create them on the cluster (as an administrator)")
    k.set_defaults(func=functools.partial(_cmd_kafka, services=services))

    r = sub.add_parser("run", help="run services")
    r.add_argument("--service", action="append", choices=names, help="repeatable; default all of them")
    r.add_argument("--log-level", default="INFO")
    r.set_defaults(func=functools.partial(_cmd_run, services=services))

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
    e.add_argument("--retain-until", required=True, type=_term, help="YYYY-MM-DD, or an RFC 3339 time")
    e.add_argument("--source-attestation", required=True)
    e.add_argument("--enrolled-by", required=True)
    hint = e.add_mutually_exclusive_group()
    hint.add_argument(
        "--face-at", type=_fractions(2), metavar="X,Y", help="the subject's face contains this point (fractions)"
    )
    hint.add_argument("--face-box", type=_fractions(4), metavar="X,Y,W,H", help="the subject's face is in this box")
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

    t = sub.add_parser(
        "tail",
        help="print events: the last 10, or with -f those that come",
        description="Print a topic's events without their biometric fields: the last 10 (-n), or with -f each new "
        "one as it comes (after the last -n, none by default); --from-beginning prints the whole topic first.",
    )
    t.add_argument("topic", nargs="?", default="matches", choices=["images", "faces", "embeddings", "matches", "dlq"])
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C stops)")
    t.add_argument("-n", "--lines", type=_count, help="print the last N events first (default 10; with -f 0)")
    t.add_argument("--from-beginning", action="store_true", help="print every event the topic holds first")
    t.set_defaults(func=_cmd_tail)

    lag = sub.add_parser(
        "lag",
        help="the consumer groups and partitions that lag, and the webhook retries scheduled",
        description="Consumer lag from the broker: the groups and partitions behind (with the age of the oldest "
        "record not consumed) and per-group totals; webhook retries waiting in a tier for their due time are listed "
        "apart as scheduled, with the next due time: they are not lag.",
    )
    lag.add_argument("--watch", type=_interval, nargs="?", const=2.0, help="refresh every N seconds (default 2)")
    lag.add_argument("--all", action="store_true", help="every group, topic and partition, also those not lagging")
    lag.set_defaults(func=functools.partial(_cmd_lag, services=services))

    st = sub.add_parser("status", help="throughput, lag and dead letters per stage")
    st.add_argument(
        "--window", type=_interval, default=2.0, help="seconds over which throughput is measured (default 2)"
    )
    st.set_defaults(func=functools.partial(_cmd_status, services=services))

    c = sub.add_parser("config", help="the effective settings and their sources; validate a settings file")
    c.add_argument("action", choices=["show", "check"])
    c.add_argument("file", nargs="?", help="settings file (default: --config or $FACESTREAM_CONFIG)")
    c.set_defaults(func=functools.partial(_cmd_config, services=services))

    add_dlq_parsers(sub)

    for service in services:
        if service.commands is not None:
            service.commands(sub)
    for add in commands:
        add(sub)
    return p


def main(
    services: Sequence[Service], argv: list[str] | None = None, commands: Sequence[Callable[[Any], None]] = ()
) -> int:
    """Run the command in `argv` (default: the process's arguments) for the pipeline of `services`."""
    args = parser(services, commands).parse_args(argv)
    # A command says itself what went wrong with the broker; the client library's own lines about
    # each failed connection would only bury that (workers keep them: they run long).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args))
    except (
        ConfigError,
        UsageError,
        ModelError,
        RejectedEvent,
    ) as exc:  # RejectedEvent: a submission that breaks its contract
        print(f"facestream: {exc}", file=sys.stderr)
        return 2
    except KafkaConnectionError as exc:
        print(
            f"facestream: cannot reach Kafka ({exc}); start the local broker with `facestream kafka up`, "
            "or set kafka_bootstrap to your cluster",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
