"""`facestream subscriptions ...` and `facestream deliveries ...`: webhook subscribers and what
became of the deliveries to them."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from facestream import audit
from facestream.config import WEBHOOK_EVENT_TYPES, Settings, load_settings
from facestream.errors import ConfigError
from facestream.services.notifier.admin import delivery_log, replay
from facestream.services.notifier.subscriptions import Subscription, SubscriptionStore, new_secret

T = TypeVar("T")


async def _with_store(settings: Settings, action: Callable[[SubscriptionStore], Awaitable[T]]) -> T:
    store = SubscriptionStore(settings, follow=False, create_key=False)
    await store.start()
    try:
        return await action(store)
    finally:
        await store.stop()


def _describe(sub: Subscription) -> str:
    now = time.time()
    secrets = ", ".join(
        f"{s.id}" + (f" (retires in {s.expires_at - now:.0f} s)" if s.expires_at else "")
        for s in sub.secrets
        if s.active(now)
    )
    state = sub.state + (f": {sub.disabled_reason}" if sub.disabled_reason else "")
    filters = (
        f"watchlists={'*' if sub.all_watchlists else ','.join(sub.watchlists)} min_score={sub.min_score} "
        f"types={','.join(sub.event_types) or '*'}"
    )
    limits = f"concurrency={sub.max_concurrency} rate={sub.rate_per_s or 'unlimited'}/s"
    return f"{sub.name:20s} {state:12s} {sub.url}\n{'':20s} {filters} {limits} secrets: {secrets}"


def _cmd_subscriptions(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def act(store: SubscriptionStore) -> str:
        if args.action == "list":
            return "\n".join(_describe(s) for s in store.all()) or "no subscriptions"
        if args.action == "add":
            secret = new_secret()
            sub = Subscription.new(
                args.name,
                args.url,
                secret,
                watchlists=tuple(args.watchlist or ()),
                all_watchlists=args.all_watchlists,
                min_score=args.min_score,
                event_types=tuple(args.event_type or ()),
                max_concurrency=args.max_concurrency,
                rate_per_s=args.rate,
            )
            await store.add(sub, actor=audit.cli_actor())
            return f"added {args.name}\nsigning secret (shown once; give it to the receiver): {secret}"
        if args.action == "update":
            sub = store.require(args.name)
            changes: dict[str, Any] = {
                k: v
                for k, v in {
                    "url": args.url,
                    "watchlists": tuple(args.watchlist) if args.watchlist else () if args.all_watchlists else None,
                    "all_watchlists": True if args.all_watchlists else False if args.watchlist else None,
                    "min_score": args.min_score,
                    "event_types": tuple(args.event_type) if args.event_type else None,
                    "max_concurrency": args.max_concurrency,
                    "rate_per_s": args.rate,
                }.items()
                if v is not None
            }
            return _describe(
                await store.put(replace(sub, **changes), check_url="url" in changes, actor=audit.cli_actor())
            )
        if args.action == "disable":
            return _describe(await store.disable(args.name, args.reason, actor=audit.cli_actor()))
        if args.action == "enable":
            return _describe(await store.enable(args.name, actor=audit.cli_actor()))
        if args.action == "rotate-secret":
            sub, secret = await store.rotate_secret(args.name, args.grace, actor=audit.cli_actor())
            return f"{_describe(sub)}\nnew signing secret (shown once): {secret}"
        await store.remove(args.name, actor=audit.cli_actor())
        return f"removed {args.name}"

    try:
        print(asyncio.run(_with_store(settings, act)))
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    return 0


def _cmd_deliveries(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.action == "list":
        entries = asyncio.run(delivery_log(settings, args.subscription, set(args.webhook_id or ()), args.outcome))
        head = ("at", "subscription", "webhook id", "#", "outcome", "http", "ms")
        print("{:24s} {:16s} {:36s} {:>2s} {:16s} {:>4s} {:>7s} reason".format(*head))
        for e in entries[-args.limit :]:
            ms = "" if e["latency_ms"] is None else f"{e['latency_ms']:.0f}"
            http = "" if e["http_status"] is None else str(e["http_status"])
            print(
                f"{e['at']:24s} {e['subscription']:16s} {e['webhook_id']:36s} {e['attempt']:2d} "
                f"{e['outcome']:16s} {http:>4s} {ms:>7s} {e['reason'] or ''}"
            )
        return 0

    async def lookup(store: SubscriptionStore) -> Subscription | None:
        return store.get(args.subscription)

    sub = asyncio.run(_with_store(settings, lookup))
    if sub is None or not sub.active:
        # Replayed now, they would only be dead-lettered again (subscription_disabled / dropped).
        state = "does not exist" if sub is None else f"is disabled ({sub.disabled_reason})"
        print(f"error: subscription {args.subscription} {state}; enable it first")
        return 2
    ids = set(args.webhook_id) if args.webhook_id else None
    sent = asyncio.run(replay(settings, args.subscription, ids, actor=audit.cli_actor()))
    for job in sent:
        print(f"replayed {job['webhook_id']} (event {job['event_id']})")
    print(f"{len(sent)} replayed to {args.subscription}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register the `subscriptions` and `deliveries` commands on the main parser."""
    s = sub.add_parser("subscriptions", help="webhook subscribers (stored in Kafka)")
    s.add_argument("action", choices=["add", "list", "update", "disable", "enable", "rotate-secret", "remove"])
    s.add_argument("name", nargs="?")
    s.add_argument("--url")
    s.add_argument("--watchlist", action="append", help="a watchlist whose matches it receives (repeatable)")
    s.add_argument("--all-watchlists", action="store_true", help="receives every watchlist's matches")
    s.add_argument("--min-score", type=float)
    s.add_argument("--event-type", action="append", choices=WEBHOOK_EVENT_TYPES)
    s.add_argument("--max-concurrency", type=int)
    s.add_argument("--rate", type=float, help="requests per second (0: unlimited)")
    s.add_argument("--reason", default="disabled by an operator")
    s.add_argument("--grace", type=float, default=86400.0, help="seconds the old secrets stay valid (rotate-secret)")
    s.set_defaults(func=_checked_subscriptions)

    d = sub.add_parser("deliveries", help="the webhook delivery log; replay of dead letters")
    d.add_argument("action", choices=["list", "replay"])
    d.add_argument("--subscription")
    d.add_argument("--webhook-id", action="append")
    d.add_argument("--outcome", choices=["delivered", "retry_scheduled", "dead_lettered", "deferred", "dropped"])
    d.add_argument("--limit", type=int, default=100)
    d.set_defaults(func=_checked_deliveries)


def _checked_subscriptions(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.name:
        raise SystemExit(f"facestream subscriptions {args.action}: NAME is required")
    if args.action == "add":
        if not args.url:
            raise SystemExit("facestream subscriptions add: --url is required")
        args.min_score = 0.0 if args.min_score is None else args.min_score
        args.max_concurrency = args.max_concurrency or 4
        args.rate = args.rate or 0.0
    return _cmd_subscriptions(args)


def _checked_deliveries(args: argparse.Namespace) -> int:
    if args.action == "replay" and not args.subscription:
        raise SystemExit("facestream deliveries replay: --subscription is required")
    return _cmd_deliveries(args)
