"""What an enrolment's consent record must say before anyone's face is enrolled: a reference a
person can follow (not blank), and a retention term that has not passed and is no longer than the
configured maximum (`max_retention_days`, 3 years by default: the outer limit Illinois' BIPA sets
for keeping biometric identifiers)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def consent_problem(consent: dict[str, Any], max_retention_days: int, today: dt.date | None = None) -> str | None:
    """Why this consent record cannot enrol anyone; None if it can."""
    today = today or dt.datetime.now(dt.UTC).date()
    for field in ("consent_ref", "enrolled_by", "source_attestation"):
        if not str(consent.get(field, "")).strip():
            return f"consent.{field} is blank"
    try:
        until = dt.date.fromisoformat(str(consent.get("retain_until", "")))
    except ValueError:
        return "consent.retain_until is not a date (YYYY-MM-DD)"
    if until <= today:
        return f"consent.retain_until {until} has passed: nothing may be enrolled to be kept until then"
    latest = today + dt.timedelta(days=max_retention_days)
    if until > latest:
        return f"consent.retain_until {until} is beyond the longest term allowed ({max_retention_days} days: {latest})"
    return None
