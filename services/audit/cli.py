"""`facestream audit verify|search|key`."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from pathlib import Path

from facestream.config import load_settings
from facestream.contracts.timeutil import parse_iso
from facestream.services.audit import report
from facestream.services.audit.log import Query, check, search
from facestream.services.audit.sequencer import public_text, signing_key


def _when(value: str) -> datetime:
    return parse_iso(value if "T" in value else f"{value}T00:00:00Z")


async def _verify(args: argparse.Namespace) -> int:
    verdict = await check(load_settings(args.config), args.topic, args.witnesses)
    summary = {
        "ok": verdict.ok,
        "entries": verdict.records,
        "checkpoints": verdict.checkpoints,
        "unsealed": verdict.unsealed,
        "next_seq": verdict.head.seq,
        "head": verdict.head.hash,
    }
    if verdict.problem is not None:
        summary["first_bad"] = str(verdict.problem)
        summary["kind"] = verdict.problem.kind
    print(json.dumps(summary))
    return 0 if verdict.ok else 1


async def _search(args: argparse.Namespace) -> int:
    query = Query(
        case_ref=args.case,
        actor=args.requester,
        subject_id=args.subject,
        image_id=args.image,
        action=args.action,
        since=_when(args.since) if args.since else None,
        until=_when(args.until) if args.until else None,
    )
    for record in await search(load_settings(args.config), query, args.limit):
        entry = record["entry"]
        print(
            json.dumps(
                {"seq": record["seq"], **{k: entry[k] for k in ("occurred_at", "action", "actor", "refs", "details")}}
            )
        )
    return 0


def _report(args: argparse.Namespace) -> int:
    made = asyncio.run(report.build(load_settings(args.config), _when(args.since), _when(args.until)))
    print(json.dumps(made.as_dict(), indent=2) if args.json else report.text(made))
    if args.html:
        Path(args.html).write_text(report.to_html(made))
        print(f"written {args.html}")
    return 0


def _key(args: argparse.Namespace) -> int:
    print(public_text(signing_key(load_settings(args.config), create=False)))
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("audit", help="the audit log: verify the chain, search it, print the verify key")
    actions = a.add_subparsers(dest="action_name", required=True)
    v = actions.add_parser("verify", help="check the whole chain; names the first bad record (exit 1)")
    v.add_argument("--topic", default="audit", help="the chain's topic (short name)")
    v.add_argument("--witnesses", default="audit.checkpoints", help="the checkpoints' witness topic (short name)")
    v.set_defaults(func=lambda args: asyncio.run(_verify(args)))
    s = actions.add_parser("search", help="who did what: entries matching every filter given, oldest first")
    s.add_argument("--case", help="case reference")
    s.add_argument("--requester", help="who acted (requester, enroller, token or cli:<user>)")
    s.add_argument("--subject", help="subject id")
    s.add_argument("--image", help="image id")
    s.add_argument("--action", help="search, enrolment, refusal, erasure, review_decision, ...")
    s.add_argument("--from", dest="since", help="from this date or RFC 3339 time (inclusive)")
    s.add_argument("--to", dest="until", help="up to this date or time (exclusive)")
    s.add_argument("--limit", type=int, default=1000, help="at most this many (the newest)")
    s.set_defaults(func=lambda args: asyncio.run(_search(args)))
    r = sub.add_parser("report", help="the transparency report for a period (text, JSON, or HTML with charts)")
    r.add_argument("--from", dest="since", required=True, help="from this date or RFC 3339 time (inclusive)")
    r.add_argument("--to", dest="until", required=True, help="up to this date or time (exclusive)")
    r.add_argument("--html", help="also write the report with its charts to this file")
    r.add_argument("--json", action="store_true", help="print JSON instead of text")
    r.set_defaults(func=_report)
    k = actions.add_parser("key", help="print the public key that verifies the checkpoints (audit_verify_key)")
    k.set_defaults(func=_key)
