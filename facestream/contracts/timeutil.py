"""UTC timestamps in the RFC 3339 form every contract uses."""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    return iso_of(datetime.now(UTC))


def iso(epoch_s: float) -> str:
    """A Unix time as RFC 3339 UTC."""
    return iso_of(datetime.fromtimestamp(epoch_s, UTC))


def iso_of(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
