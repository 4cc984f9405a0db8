"""The notifier's operations in the HTTP API: subscriptions, their deliveries, replay.

They work on the subscriptions topic (a store that follows it, in the API's worker) and on the
delivery log and dead-letter topics, so they answer the same wherever the notifier runs.
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.

import time
import uuid
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from facestream import contracts
from facestream.api import Caller, Problem, Role, Routes, Strict, require
from facestream.config import WEBHOOK_EVENT_TYPES, Settings
from facestream.contracts.timeutil import iso, now_iso, parse_iso
from facestream.errors import ConfigError
from facestream.io.net import guarded_client
from facestream.ops.logs import get_logger
from facestream.services.notifier.admin import delivery_log, replay
from facestream.services.notifier.logic import attempt
from facestream.services.notifier.subscriptions import NAME, Subscription, SubscriptionStore, new_secret

log = get_logger(__name__)
EventType = Literal[WEBHOOK_EVENT_TYPES]  # type: ignore[valid-type]


class SubscriptionIn(Strict):
    name: str = Field(pattern=NAME.pattern, description="also part of its dead-letter topic's name")
    url: str = Field(min_length=8, max_length=2048, description="http(s)://…; checked against the SSRF policy")
    watchlists: list[str] = Field(
        default_factory=list, max_length=100, description="the watchlists whose matches it receives"
    )
    all_watchlists: bool = Field(False, description="receives every watchlist's matches (instead of `watchlists`)")
    min_score: float = Field(0.0, ge=-1, le=1)
    event_types: list[EventType] = Field(default_factory=list, description="empty: every event type")
    max_concurrency: int = Field(4, ge=1, le=256)
    rate_per_s: float = Field(0.0, ge=0, description="0: no limit")


class SubscriptionPatch(Strict):
    url: str | None = Field(None, min_length=8, max_length=2048)
    watchlists: list[str] | None = Field(None, max_length=100)
    all_watchlists: bool | None = None
    min_score: float | None = Field(None, ge=-1, le=1)
    event_types: list[EventType] | None = None
    max_concurrency: int | None = Field(None, ge=1, le=256)
    rate_per_s: float | None = Field(None, ge=0)
    state: Literal["active", "disabled"] | None = None
    disabled_reason: str | None = Field(None, max_length=500)


GRACE_S = 86400.0


class RotateIn(Strict):
    grace_s: float = Field(GRACE_S, ge=0, le=30 * 86400, description="how long the old secrets stay valid")


class ReplayIn(Strict):
    webhook_ids: list[str] | None = Field(None, min_length=1, description="these; else by time or all new")
    since: str | None = Field(None, description="dead-lettered at or after (RFC 3339)")
    until: str | None = Field(None, description="dead-lettered before (RFC 3339)")


def describe(sub: Subscription) -> dict[str, Any]:
    """A subscription as the API shows it: never a secret, only their ids and expiries."""
    now = time.time()
    return {
        "name": sub.name,
        "url": sub.url,
        "watchlists": list(sub.watchlists),
        "all_watchlists": sub.all_watchlists,
        "min_score": sub.min_score,
        "event_types": list(sub.event_types),
        "state": sub.state,
        "disabled_reason": sub.disabled_reason,
        "max_concurrency": sub.max_concurrency,
        "rate_per_s": sub.rate_per_s,
        "secrets": [
            {"id": s.id, "created_at": iso(s.created_at), "expires_at": s.expires_at and iso(s.expires_at)}
            for s in sub.secrets
            if s.active(now)
        ],
        "updated_at": iso(sub.updated_at) if sub.updated_at else None,
    }


def _time(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_iso(value).timestamp()
    except ValueError:
        raise Problem(
            422, "invalid-request", f"{name} is not an RFC 3339 time", [{"field": name, "message": "not a time"}]
        ) from None


def routes(settings: Settings) -> Routes:
    store = SubscriptionStore(settings)
    router = APIRouter(prefix="/v1/subscriptions", tags=["webhooks"])
    Admin = Annotated[Caller, require(Role.admin)]
    Reader = Annotated[Caller, require(Role.admin, Role.auditor)]

    def named(name: str) -> Subscription:
        sub = store.get(name)
        if sub is None:
            raise Problem(404, "not-found", f"no subscription {name!r}")
        return sub

    async def saved(action: Any) -> Subscription:
        try:
            result: Subscription = await action
        except ConfigError as exc:  # a name taken, a URL the SSRF policy refuses, ...
            raise Problem(422, "invalid-subscription", str(exc)) from None
        return result

    @router.get("", summary="List the subscriptions")
    async def list_subscriptions(_: Reader) -> list[dict[str, Any]]:
        return [describe(s) for s in store.all()]

    @router.post("", status_code=201, summary="Subscribe an endpoint; its signing secret is shown only here")
    async def create(body: SubscriptionIn, who: Admin) -> dict[str, Any]:
        if store.get(body.name) is not None:
            raise Problem(409, "exists", f"a subscription named {body.name!r} exists; PATCH it, or DELETE it first")
        secret = new_secret()
        sub = Subscription.new(
            body.name,
            body.url,
            secret,
            watchlists=tuple(body.watchlists),
            all_watchlists=body.all_watchlists,
            min_score=body.min_score,
            event_types=tuple(body.event_types),
            max_concurrency=body.max_concurrency,
            rate_per_s=body.rate_per_s,
        )
        sub = await saved(store.add(sub, actor=f"token:{who.name}"))
        log.info("subscription_created", subscription=sub.name, by=who.name)
        return {**describe(sub), "signing_secret": secret}

    @router.get("/{name}", summary="One subscription")
    async def show(name: str, _: Reader) -> dict[str, Any]:
        return describe(named(name))

    @router.patch("/{name}", summary="Change a subscription: endpoint, filters, limits, enabled or not")
    async def update(name: str, body: SubscriptionPatch, who: Admin) -> dict[str, Any]:
        sub = named(name)
        changes = body.model_dump(exclude_none=True)
        for key in ("watchlists", "event_types"):
            if key in changes:
                changes[key] = tuple(changes[key])
        if changes.get("state") == "active":
            changes["disabled_reason"] = ""
        if changes.get("all_watchlists") and "watchlists" not in changes:
            changes["watchlists"] = ()  # bound to every watchlist instead of some
        if changes.get("watchlists") and "all_watchlists" not in changes:
            changes["all_watchlists"] = False
        sub = await saved(store.put(replace(sub, **changes), check_url="url" in changes, actor=f"token:{who.name}"))
        log.info("subscription_updated", subscription=name, fields=sorted(changes), by=who.name)
        return describe(sub)

    @router.delete("/{name}", status_code=204, summary="Remove a subscription")
    async def remove(name: str, who: Admin) -> None:
        named(name)
        await store.remove(name, actor=f"token:{who.name}")
        log.info("subscription_removed", subscription=name, by=who.name)

    @router.post("/{name}/rotate-secret", summary="A new signing secret (shown only here); the old ones expire")
    async def rotate(name: str, who: Admin, body: RotateIn | None = None) -> dict[str, Any]:
        named(name)
        sub, secret = await store.rotate_secret(name, body.grace_s if body else GRACE_S, actor=f"token:{who.name}")
        log.info("subscription_secret_rotated", subscription=name, by=who.name)
        return {**describe(sub), "signing_secret": secret}

    @router.post("/{name}/test", summary="Send the subscriber a signed test event now; its answer comes back")
    async def test(name: str, who: Admin) -> dict[str, Any]:
        """The body is a `webhook.test` event (contracts/webhook.test.schema.json), signed with the
        subscription's current secrets, posted once under the same SSRF policy as deliveries."""
        sub = named(name)
        event_id = str(uuid.uuid4())
        body = {
            "type": "webhook.test",
            "timestamp": now_iso(),
            "event_id": event_id,
            "subscription": name,
            "note": "a test delivery from facestream: no subject, no match",
        }
        contracts.validate("webhook.test", body)
        job = {"webhook_id": "msg_test_" + event_id.replace("-", ""), "payload": body}
        started = time.monotonic()
        async with guarded_client(
            settings.webhook_allow_private, settings.webhook_timeout_s, setting="webhook_allow_private"
        ) as client:
            verdict = await attempt(client, sub, job)
        log.info("subscription_tested", subscription=name, outcome=verdict.outcome, by=who.name)
        return {
            "webhook_id": job["webhook_id"],
            "outcome": verdict.outcome,
            "http_status": verdict.status,
            "reason": verdict.reason,
            "error": verdict.error,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
        }

    @router.get("/{name}/deliveries", summary="Delivery attempts, newest last")
    async def deliveries(
        name: str,
        _: Reader,
        webhook_id: Annotated[list[str] | None, Query()] = None,
        outcome: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[dict[str, Any]]:
        named(name)
        entries = await delivery_log(settings, name, set(webhook_id or ()), outcome)
        return entries[-limit:]

    @router.post("/{name}/replay", summary="Send dead-lettered deliveries again (ids unchanged)")
    async def replay_letters(name: str, body: ReplayIn, who: Admin) -> dict[str, Any]:
        sub = named(name)
        if not sub.active:
            raise Problem(409, "subscription-disabled", f"{name} is disabled ({sub.disabled_reason}); enable it first")
        since, until = _time(body.since, "since"), _time(body.until, "until")
        ids = set(body.webhook_ids) if body.webhook_ids else None
        sent = await replay(settings, name, ids, since=since, until=until, actor=f"token:{who.name}")
        log.info("deliveries_replayed", subscription=name, count=len(sent), by=who.name)
        return {"replayed": [{"webhook_id": j["webhook_id"], "event_id": j["event_id"]} for j in sent]}

    return Routes(router, starts=[store.start], stops=[store.stop])
