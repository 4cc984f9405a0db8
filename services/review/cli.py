"""`facestream review pending|show|confirm|reject`: reviews from the command line, as the
operating-system user running the command (`cli:<user>`)."""

from __future__ import annotations

import argparse
import asyncio
import json

from facestream import audit
from facestream.config import load_settings
from facestream.errors import UsageError
from facestream.services.review.board import Board, DecisionRefused


async def _review(args: argparse.Namespace) -> int:
    board = Board(load_settings(args.config), follow=False)
    await board.start()
    try:
        if args.action == "pending":
            for case in board.pending(args.limit):
                print(json.dumps(case))
        elif args.action == "show":
            print(json.dumps(board.show(args.match), indent=2))
        else:
            if not args.subject:
                raise UsageError(f"facestream review {args.action}: --subject is required")
            verdict = "confirm" if args.action == "confirm" else "reject"
            print(json.dumps(await board.decide(args.match, args.subject, verdict, audit.cli_actor(), args.note)))
    except DecisionRefused as exc:
        print(f"refused: {exc}")
        return 1
    finally:
        await board.stop()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("review", help="candidate review: pending matches, confirm or reject a candidate")
    r.add_argument("action", choices=["pending", "show", "confirm", "reject"])
    r.add_argument("match", nargs="?", help="the match's event id (show, confirm, reject)")
    r.add_argument("--subject", help="the candidate's subject id (confirm, reject)")
    r.add_argument("--note", default="", help="why (kept with the decision, never sent to subscribers)")
    r.add_argument("--limit", type=int, default=100)

    def run(args: argparse.Namespace) -> int:
        if args.action != "pending" and not args.match:
            raise SystemExit(f"facestream review {args.action}: MATCH is required")
        return asyncio.run(_review(args))

    r.set_defaults(func=run)
