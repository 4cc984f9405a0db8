"""API tokens: who a request comes from, and what it may do.

A token is `fst_<id>_<secret>`, shown once when it is created. The compacted `api.tokens` topic
(key: the id) keeps only what checks it: the secret's SHA-256 (a 256-bit random secret needs no
slow hash: nothing can be guessed from a fast one), the token's name, its roles, its expiry and,
once revoked, when. Every API worker follows the topic, so a revocation or an expiry takes effect on
all of them. The name is the identity the pipeline records (requester, enroller, reviewer, erasure
requester), never a field a caller fills in.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from facestream import audit
from facestream.api import Role
from facestream.config import Settings
from facestream.contracts.timeutil import iso
from facestream.errors import ConfigError
from facestream.io.kafka import TopicSpec, close, follow, producer, table_reader
from facestream.ops.logs import get_logger
from facestream.runtime.tasks import cancel

log = get_logger(__name__)

PREFIX = "fst"
_TOKEN = re.compile(r"^fst_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")


def topic_spec(settings: Settings) -> TopicSpec:
    return TopicSpec(settings.topic("api.tokens"), 1, compact=True)


@dataclass(frozen=True)
class Token:
    """A token as stored: never its secret."""

    id: str
    name: str
    roles: tuple[str, ...]
    sha256: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    created_by: str = ""

    def valid(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.valid(now) else "expired"

    def public(self, now: float) -> dict[str, Any]:
        """What listings show: everything but the hash."""
        out = {k: v for k, v in asdict(self).items() if k != "sha256"}
        for when in ("created_at", "expires_at", "revoked_at"):
            out[when] = None if out[when] is None else iso(out[when])
        out["roles"] = list(self.roles)
        out["state"] = self.state(now)
        return out


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    name: str, roles: list[str], expires_in_s: float | None, created_by: str, now: float | None = None
) -> tuple[Token, str]:
    """A new token and its one-time text. Raises ConfigError for a bad name, role or expiry."""
    if not NAME.match(name):
        raise ConfigError(f"token name {name!r}: 1 to 64 of a-z 0-9 . _ @ -, starting with a letter or digit")
    known = {r.value for r in Role}
    unknown = sorted(set(roles) - known)
    if not roles or unknown:
        raise ConfigError(f"roles must be some of {', '.join(sorted(known))}; got {', '.join(roles) or 'none'}")
    if expires_in_s is not None and expires_in_s <= 0:
        raise ConfigError("a token's lifetime must be positive")
    now = time.time() if now is None else now
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    expires = None if expires_in_s is None else now + expires_in_s
    token = Token(token_id, name, tuple(sorted(set(roles))), _digest(secret), now, expires, None, created_by)
    return token, f"{PREFIX}_{token_id}_{secret}"


def parse(text: str) -> tuple[str, str] | None:
    """(id, secret) of a token's text, or None if it is not one."""
    m = _TOKEN.match(text)
    return (m.group(1), m.group(2)) if m else None


class TokenStore:
    """The tokens topic, read to its end on `start` and then followed (when `follow`)."""

    def __init__(self, settings: Settings, follow: bool = True) -> None:
        self.settings = settings
        self.topic = topic_spec(settings).name
        self.follow = follow
        self._tokens: dict[str, Token] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.producer = producer(settings)

    async def start(self) -> None:
        await self.producer.start()
        self._consumer = await table_reader(self.settings, self.topic, lambda r: self._apply(r.key, r.value))
        if self.follow:
            self._task = asyncio.create_task(follow(self._consumer, lambda r: self._apply(r.key, r.value)))

    async def stop(self) -> None:
        await cancel(self._task)
        await close(self._consumer, self.producer)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._tokens.pop(key.decode(), None)
            return
        try:
            raw = orjson.loads(value)
            token = Token(**{**raw, "roles": tuple(raw["roles"])})
        except (ValueError, TypeError, KeyError) as exc:
            log.error("token_record_unreadable", token_id=key.decode(errors="replace")[:32], error=str(exc)[:200])
            return
        self._tokens[token.id] = token

    async def _put(self, token: Token) -> None:
        record = orjson.dumps(asdict(token))
        await self.producer.send_and_wait(self.topic, record, key=token.id.encode())
        self._apply(token.id.encode(), record)

    async def create(
        self, name: str, roles: list[str], expires_in_s: float | None, created_by: str
    ) -> tuple[Token, str]:
        """A new token, audited as made by `created_by` (`token:<name>` or `cli:<user>`)."""
        token, text = new_token(name, roles, expires_in_s, created_by)
        await self._audit(token, created_by, "created")
        await self._put(token)
        return token, text

    async def revoke(self, token_id: str, actor: str) -> Token:
        token = self._tokens.get(token_id)
        if token is None:
            raise ConfigError(f"no token with id {token_id!r}")
        if token.revoked_at is None:
            token = replace(token, revoked_at=time.time())
            await self._audit(token, actor, "revoked")
            await self._put(token)
        return token

    async def _audit(self, token: Token, actor: str, change: str) -> None:
        details = {"change": change, "name": token.name, "roles": ",".join(token.roles)}
        if token.expires_at is not None:
            details["expires_at"] = iso(token.expires_at)
        entry = audit.entry("token_change", actor, "api", f"{token.id}/{change}", details=details, token=token.id)
        await audit.send(self.settings, self.producer, entry)

    def all(self) -> list[Token]:
        return sorted(self._tokens.values(), key=lambda t: (t.name, t.created_at))

    def get(self, token_id: str) -> Token | None:
        return self._tokens.get(token_id)

    def verify(self, text: str, now: float | None = None) -> Token | None:
        """The valid token whose text this is, or None (unknown, wrong secret, expired, revoked)."""
        parsed = parse(text)
        if parsed is None:
            return None
        token = self._tokens.get(parsed[0])
        if token is None or not hmac.compare_digest(token.sha256, _digest(parsed[1])):
            return None
        return token if token.valid(time.time() if now is None else now) else None
