"""`facestream tokens create|list|revoke`: API tokens from the command line (the first admin
token comes from here; later ones may come from the API)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from facestream import audit
from facestream.api import Role
from facestream.config import load_settings
from facestream.io.kafka import ensure_topics
from facestream.services.api.tokens import TokenStore, topic_spec


async def _tokens(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    await ensure_topics(settings, [topic_spec(settings)])
    store = TokenStore(settings, follow=False)
    await store.start()
    try:
        now = time.time()
        if args.action == "create":
            expires = None if args.expires_days <= 0 else args.expires_days * 86400
            token, text = await store.create(args.name, args.role, expires, created_by=audit.cli_actor())
            print(json.dumps(token.public(now)))
            print(f"token (shown once, keep it secret): {text}")
        elif args.action == "list":
            for token in store.all():
                print(json.dumps(token.public(now)))
        else:
            print(json.dumps((await store.revoke(args.id, actor=audit.cli_actor())).public(now)))
    finally:
        await store.stop()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("tokens", help="API tokens: create (shown once), list, revoke")
    actions = t.add_subparsers(dest="action", required=True)
    c = actions.add_parser("create", help="create a token with roles")
    c.add_argument("--name", required=True, help="who or what holds it: recorded as the identity of its requests")
    c.add_argument("--role", action="append", required=True, choices=[r.value for r in Role], help="repeatable")
    c.add_argument("--expires-days", type=float, default=90.0, help="lifetime in days (0: never expires)")
    actions.add_parser("list", help="every token, never its secret")
    r = actions.add_parser("revoke", help="revoke a token by id, on every API worker")
    r.add_argument("id")
    t.set_defaults(func=lambda args: asyncio.run(_tokens(args)))
