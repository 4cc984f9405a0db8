"""What an enrolment's consent record must say before anyone's face is enrolled: a reference a
person can follow (not blank), and a retention term that has not passed and is no longer than the
configured maximum (`max_retention_days`, 3 years by default: the outer limit Illinois' BIPA sets
for keeping biometric identifiers).

`retain_until` is a date (the data is erased when that day begins, UTC) or an RFC 3339 time."""

from __future__ import annotations

import datetime as dt
from typing import Any


def retention_ends(retain_until: str) -> dt.datetime:
    """The moment a term ends: a date's first instant (UTC), or the time given. ValueError if neither."""
    if len(retain_until) == 10:
        return dt.datetime.combine(dt.date.fromisoformat(retain_until), dt.time(), dt.UTC)
    ends = dt.datetime.fromisoformat(retain_until.replace("Z", "+00:00"))
    if ends.tzinfo is None:
        raise ValueError("a retention time needs its UTC offset")
    return ends


def consent_problem(consent: dict[str, Any], max_retention_days: int, now: dt.datetime | None = None) -> str | None:
    """Why this consent record cannot enrol anyone; None if it can."""
    now = now or dt.datetime.now(dt.UTC)
    for field in ("consent_ref", "enrolled_by", "source_attestation"):
        if not str(consent.get(field, "")).strip():
            return f"consent.{field} is blank"
    until = str(consent.get("retain_until", ""))
    try:
        ends = retention_ends(until)
    except ValueError:
        return "consent.retain_until is neither a date (YYYY-MM-DD) nor a time with its UTC offset"
    if ends <= now:
        return f"consent.retain_until {until} has passed: nothing may be enrolled to be kept until then"
    latest = now + dt.timedelta(days=max_retention_days)
    if ends > latest:
        allowed = f"{max_retention_days} days: {latest.date()}"
        return f"consent.retain_until {until} is beyond the longest term allowed ({allowed})"
    return None
