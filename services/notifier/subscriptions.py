"""Webhook subscriptions, stored durably in a compacted Kafka topic (key: the subscription name,
a tombstone removes it), so every notifier worker sees the same set and a restart loses nothing.

Signing secrets never travel in clear: each is encrypted with `subscriptions_key` (Fernet) before
it is written, and only processes given that key by configuration can sign or verify.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets as _secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from cryptography.fernet import Fernet, InvalidToken

from facestream import audit
from facestream.config import WEBHOOK_EVENT_TYPES, Settings, SubscriptionSeed
from facestream.errors import ConfigError, UnsafeDestination
from facestream.io.kafka import close, follow, producer, table_reader
from facestream.io.net import AddressPolicy, resolve
from facestream.keys import configured_key
from facestream.ops.logs import get_logger
from facestream.runtime.tasks import cancel

log = get_logger(__name__)
SYSTEM = "system:notifier"  # the actor of changes the notifier makes on its own (a 410 Gone, the settings)


@dataclass(frozen=True)
class SigningSecret:
    """One signing key of a subscription (``whsec_…``). A rotation gives the old ones an expiry;
    until then every delivery carries a signature for each."""

    id: str
    value: str = field(repr=False)
    created_at: float = 0.0
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class Subscription:
    """A webhook subscriber: where to post, how to sign, which matches it wants, its state and
    limits. Stored in the compacted subscriptions topic (`SubscriptionStore` below)."""

    name: str
    url: str
    secrets: tuple[SigningSecret, ...] = ()
    watchlists: tuple[str, ...] = ()  # the watchlists whose matches it receives
    min_score: float = 0.0
    event_types: tuple[str, ...] = ()
    all_watchlists: bool = False  # ... or every watchlist's, said explicitly
    state: str = "active"  # or "disabled"
    disabled_reason: str = ""
    max_concurrency: int = 4
    rate_per_s: float = 0.0  # 0: no rate limit
    updated_at: float = 0.0

    @classmethod
    def new(cls, name: str, url: str, secret: str, **kwargs: Any) -> Subscription:
        """A subscription with one signing secret."""
        return cls(name, url, (SigningSecret("s1", secret, time.time()),), **kwargs)

    @property
    def active(self) -> bool:
        return self.state == "active"

    def signing_secrets(self, now: float) -> list[str]:
        return [s.value for s in self.secrets if s.active(now)]

    def wants(self, watchlist: str, score: float) -> bool:
        """Whether a candidate from `watchlist` with `score` passes this subscriber's filters."""
        return (self.all_watchlists or watchlist in self.watchlists) and score >= self.min_score

    def wants_type(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # also part of its dead-letter topic's name


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form (24 random bytes)."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(24)).decode()


class KeyMismatch(ConfigError):
    """The subscriptions topic was written with another subscriptions key."""


def subscriptions_key(settings: Settings, create: bool = True) -> str:
    """`subscriptions_key`, or the key file under data_dir, created on first use when `create`
    (a notifier worker); otherwise (the command line) a missing key is an error."""
    configured = settings.subscriptions_key.get_secret_value()
    return configured_key(configured, settings.data_dir, "subscriptions.key", "subscriptions_key", create)


def secret_box(settings: Settings, create: bool = True) -> Fernet:
    """The cipher for secrets at rest."""
    key = subscriptions_key(settings, create)
    try:
        return Fernet(key.encode())
    except ValueError as exc:
        raise ConfigError("subscriptions_key must be 32 url-safe base64-encoded bytes") from exc


def encode(sub: Subscription, box: Fernet) -> bytes:
    record = asdict(sub)
    record["secrets"] = [{**asdict(s), "value": box.encrypt(s.value.encode()).decode()} for s in sub.secrets]
    return orjson.dumps(record)


_FIELDS = {f.name for f in fields(Subscription)}
_SECRET_FIELDS = {f.name for f in fields(SigningSecret)}


def decode(raw: bytes, box: Fernet) -> Subscription:
    """A stored subscription. Fields this version does not know (written by a newer one) are
    left out, so one of them never makes the whole store unreadable; secrets that do not decrypt
    raise `KeyMismatch`, anything else unreadable `ConfigError`."""
    try:
        record: dict[str, Any] = orjson.loads(raw)
        name = record.get("name")
        values = [{k: v for k, v in s.items() if k in _SECRET_FIELDS} for s in record.pop("secrets")]
        secrets = tuple(SigningSecret(**{**s, "value": box.decrypt(s["value"].encode()).decode()}) for s in values)
        known = {k: v for k, v in record.items() if k in _FIELDS}
        for key in ("watchlists", "event_types"):
            known[key] = tuple(known.get(key, ()))
        return Subscription(secrets=secrets, **known)
    except InvalidToken as exc:
        raise KeyMismatch(f"subscription {name!r}: its secrets do not decrypt with this subscriptions_key") from exc
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"unreadable subscription record: {type(exc).__name__}: {exc}"[:300]) from exc


def from_seed(seed: SubscriptionSeed) -> Subscription:
    """The subscription a `[[subscriptions]]` table of the settings describes."""
    return Subscription.new(
        seed.name,
        seed.url,
        seed.signing_secret,
        watchlists=seed.watchlists,
        all_watchlists=seed.all_watchlists,
        min_score=seed.min_score,
        event_types=seed.event_types,
    )


def validate(sub: Subscription, settings: Settings) -> None:
    """Refuse what can never be delivered: bad names, non-http(s) URLs, credentials in the URL,
    unknown event types. The SSRF check proper happens again on every connection."""
    if not NAME.match(sub.name):
        raise ConfigError(f"subscription name {sub.name!r}: letters, digits, '_' and '-', at most 63")
    parts = urlsplit(sub.url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"subscription {sub.name}: url must be http(s)://host/...")
    if parts.username or parts.password:
        raise ConfigError(f"subscription {sub.name}: no credentials in the url")
    if sub.all_watchlists == bool(sub.watchlists):
        raise ConfigError(
            f"subscription {sub.name}: name the watchlists whose matches it receives, or say all_watchlists "
            "(one of the two)"
        )
    unknown = set(sub.event_types) - set(WEBHOOK_EVENT_TYPES)
    if unknown:
        raise ConfigError(f"subscription {sub.name}: unknown event types {sorted(unknown)}")
    if sub.max_concurrency < 1 or sub.rate_per_s < 0 or not sub.secrets:
        raise ConfigError(f"subscription {sub.name}: needs a secret, max_concurrency >= 1, rate_per_s >= 0")


async def check_destination(sub: Subscription, settings: Settings) -> None:
    """Refuse an endpoint that resolves to a loopback, private, link-local or metadata address
    the allow-list does not name. A courtesy at registration: the guard proper is the same check
    on every connection (facestream.io.net), since DNS may answer differently later. A name that
    does not resolve yet is accepted for the same reason."""
    host = urlsplit(sub.url).hostname or ""
    try:
        addresses = await resolve(host, urlsplit(sub.url).port or 443)
    except httpx.ConnectError:
        log.warning("subscription_host_unresolved", subscription=sub.name, host=host)
        return
    policy = AddressPolicy(settings.webhook_allow_private, "webhook_allow_private")
    try:
        for ip in addresses:
            policy.check(host, ip)
    except UnsafeDestination as exc:
        raise ConfigError(f"subscription {sub.name}: {exc}") from exc


class SubscriptionStore:
    """The subscriptions topic, read to its end on `start` and then followed; writes go to the
    topic and are applied locally once the broker has acknowledged them."""

    def __init__(self, settings: Settings, follow: bool = True, create_key: bool = True) -> None:
        self.settings = settings
        self.topic = settings.topic("subscriptions")
        self.follow = follow
        self.box = secret_box(settings, create_key)
        self._mismatched: set[str] = set()  # names whose latest record does not decrypt
        self._subs: dict[str, Subscription] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        # Shared with the delivery engine, which runs only while the store does.
        self.producer = producer(settings)
        self.listeners: list[Callable[[Subscription | None, str], None]] = []

    async def start(self) -> None:
        await self.producer.start()
        self._consumer = await table_reader(self.settings, self.topic, lambda r: self._apply(r.key, r.value))
        if self._mismatched:
            await self.stop()
            raise KeyMismatch(
                f"{len(self._mismatched)} subscription(s) in {self.topic} ({', '.join(sorted(self._mismatched)[:5])}) "
                "were written with another subscriptions_key: start with the key that wrote them"
            )
        if self.follow:
            self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        await cancel(self._task)
        await close(self._consumer, self.producer)

    async def _follow(self) -> None:
        assert self._consumer is not None
        await follow(self._consumer, lambda r: self._apply(r.key, r.value))

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode()
        self._mismatched.discard(name)
        if value is None:
            self._subs.pop(name, None)
            sub = None
        else:
            try:
                sub = decode(value, self.box)
            except KeyMismatch as exc:
                self._mismatched.add(name)
                log.error("subscription_unreadable", subscription=name, error=str(exc))
                return
            except ConfigError as exc:  # keeps the last readable state of that subscription
                log.error("subscription_unreadable", subscription=name, error=str(exc))
                return
            self._subs[name] = sub
        for listener in self.listeners:
            listener(sub, name)

    def get(self, name: str) -> Subscription | None:
        return self._subs.get(name)

    def all(self) -> list[Subscription]:
        return sorted(self._subs.values(), key=lambda s: s.name)

    def active(self) -> list[Subscription]:
        return [s for s in self.all() if s.active]

    async def put(
        self, sub: Subscription, check_url: bool = False, actor: str = SYSTEM, change: str = "updated"
    ) -> Subscription:
        """Write `sub` (audited as `change` by `actor`)."""
        validate(sub, self.settings)
        if check_url:
            await check_destination(sub, self.settings)
        sub = replace(sub, updated_at=time.time())
        record = encode(sub, self.box)
        await self._audit(sub.name, actor, change, sub)
        await self.producer.send_and_wait(self.topic, record, key=sub.name.encode())
        self._apply(sub.name.encode(), record)
        return sub

    async def _audit(self, name: str, actor: str, change: str, sub: Subscription | None) -> None:
        details: dict[str, Any] = {"change": change}
        if sub is not None:
            details |= {"state": sub.state, "host": urlsplit(sub.url).hostname, "min_score": sub.min_score}
        entry = audit.entry(
            "subscription_change",
            actor,
            "notifier",
            f"{name}/{change}/{time.time()}",
            details=details,
            subscription=name,
            watchlists=list(sub.watchlists) if sub is not None else None,
        )
        await audit.send(self.settings, self.producer, entry)

    def require(self, name: str) -> Subscription:
        sub = self.get(name)
        if sub is None:
            raise ConfigError(f"no subscription named {name!r}")
        return sub

    async def add(self, sub: Subscription, actor: str = SYSTEM) -> Subscription:
        if self.get(sub.name) is not None:
            raise ConfigError(f"subscription {sub.name!r} exists")
        return await self.put(sub, check_url=True, actor=actor, change="added")

    async def seed(self, seeds: Iterable[SubscriptionSeed]) -> None:
        """Add configured subscriptions that the store does not have yet (existing ones win:
        their state, secrets and limits may have changed since)."""
        for sub in map(from_seed, seeds):
            if self.get(sub.name) is None:
                await self.put(sub, change="added from the settings")
                log.info("subscription_seeded", subscription=sub.name)

    async def disable(self, name: str, reason: str, actor: str = SYSTEM) -> Subscription:
        sub = replace(self.require(name), state="disabled", disabled_reason=reason)
        return await self.put(sub, actor=actor, change="disabled")

    async def enable(self, name: str, actor: str = SYSTEM) -> Subscription:
        sub = replace(self.require(name), state="active", disabled_reason="")
        return await self.put(sub, actor=actor, change="enabled")

    async def rotate_secret(
        self, name: str, grace_s: float, secret: str | None = None, actor: str = SYSTEM
    ) -> tuple[Subscription, str]:
        """Add a new signing secret; the current ones stay valid for `grace_s` (0: retire now).
        Returns the subscription and the new secret (shown once to the operator)."""
        sub = self.require(name)
        now = time.time()
        value = secret or new_secret()
        kept = tuple(
            replace(s, expires_at=min(s.expires_at or now + grace_s, now + grace_s))
            for s in sub.secrets
            if s.active(now) and grace_s > 0
        )
        fresh = SigningSecret(f"s{uuid.uuid4().hex[:8]}", value, now)
        return await self.put(replace(sub, secrets=(*kept, fresh)), actor=actor, change="secret rotated"), value

    async def remove(self, name: str, actor: str = SYSTEM) -> None:
        self.require(name)
        await self._audit(name, actor, "removed", None)
        await self.producer.send_and_wait(self.topic, None, key=name.encode())
        self._apply(name.encode(), None)
