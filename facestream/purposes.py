"""Purpose binding: which watchlists a search may reach, and which enrolments a watchlist takes.

Watchlists are declared in the settings (`[[watchlists]]`) with the purposes they may be searched
for and the longest retention of their enrolments. A search names its purpose; it reaches only the
watchlists that allow that purpose: those it names (each must allow it) or, naming none, every
watchlist that does. With no watchlist declared nothing is bound (the embedded demo's default), and
the worker says so when it starts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from facestream.config import Settings
from facestream.contracts.consent import retention_ends
from facestream.errors import PurposeNotAllowed, WatchlistRefused


def bound(settings: Settings) -> bool:
    return bool(settings.watchlists)


def search_scope(settings: Settings, intent: dict[str, Any]) -> list[str] | None:
    """The watchlists a search intent may reach (None: every one, nothing declared); raises
    `PurposeNotAllowed` when its purpose reaches none or a watchlist it names does not allow it."""
    if not settings.watchlists:
        return list(intent["watchlists"]) if intent.get("watchlists") else None
    purpose = intent["purpose"]
    allowed = [w.name for w in settings.watchlists if purpose in w.purposes]
    named = intent.get("watchlists")
    if named:
        refused = sorted(set(named) - set(allowed))
        if refused:
            raise PurposeNotAllowed(
                f"purpose {purpose[:100]!r} is not allowed for watchlist(s) {', '.join(refused)[:300]}"
            )
        return sorted(named)
    if not allowed:
        raise PurposeNotAllowed(f"no declared watchlist may be searched for purpose {purpose[:100]!r}")
    return sorted(allowed)


def check_enrolment(settings: Settings, intent: dict[str, Any], now: datetime | None = None) -> None:
    """Raise `WatchlistRefused` for an enrolment into an undeclared watchlist, or retained longer
    than its watchlist allows (nothing declared: anything goes here; the global maximum still holds)."""
    if not settings.watchlists:
        return
    spec = next((w for w in settings.watchlists if w.name == intent["watchlist"]), None)
    if spec is None:
        declared = ", ".join(w.name for w in settings.watchlists)
        raise WatchlistRefused(f"watchlist {intent['watchlist'][:64]!r} is not declared (declared: {declared[:300]})")
    if spec.retention_days is None:
        return
    until = intent["consent"]["retain_until"]
    end = retention_ends(until)
    limit = (now or datetime.now(UTC)) + timedelta(days=spec.retention_days)
    if end > limit:
        raise WatchlistRefused(f"retain_until {until} is beyond watchlist {spec.name!r}'s {spec.retention_days} days")
