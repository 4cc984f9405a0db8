"""Purpose binding as the detector and the matcher apply it (tests/test_accountability.py runs it
through the whole pipeline), and its settings."""

from __future__ import annotations

import pytest

from facestream import client
from facestream.config import Settings, load_settings
from facestream.errors import ConfigError, PurposeNotAllowed, WatchlistRefused
from facestream.purposes import check_enrolment, search_scope

BOUND = Settings(
    watchlists=(
        {"name": "missing", "purposes": ["locate a missing person"], "retention_days": 30},
        {"name": "fraud", "purposes": ["fraud investigation", "locate a missing person"]},
    )
)


def intent(purpose: str, watchlists: list[str] | None = None) -> dict[str, object]:
    return client.search_intent(purpose, "CASE-1", "analyst", watchlists)


def test_a_search_reaches_only_the_watchlists_its_purpose_allows() -> None:
    assert search_scope(BOUND, intent("locate a missing person")) == ["fraud", "missing"]
    assert search_scope(BOUND, intent("fraud investigation")) == ["fraud"]
    assert search_scope(BOUND, intent("locate a missing person", ["missing"])) == ["missing"]
    with pytest.raises(PurposeNotAllowed, match="not allowed for watchlist"):
        search_scope(BOUND, intent("fraud investigation", ["missing", "fraud"]))
    with pytest.raises(PurposeNotAllowed, match="no declared watchlist"):
        search_scope(BOUND, intent("curiosity"))
    # Nothing declared: nothing bound (the embedded demo).
    assert search_scope(Settings(), intent("curiosity")) is None
    assert search_scope(Settings(), intent("curiosity", ["x"])) == ["x"]


def enrol(watchlist: str, retain_until: str) -> dict[str, object]:
    return client.enroll_intent(
        "s1",
        watchlist,
        lawful_basis="explicit_consent",
        consent_ref="c/1",
        retain_until=retain_until,
        source_attestation="given by the subject",
        enrolled_by="clerk",
    )


def test_an_enrolment_needs_a_declared_watchlist_and_its_retention() -> None:
    check_enrolment(BOUND, enrol("fraud", "2030-01-01"))  # no retention limit of its own
    with pytest.raises(WatchlistRefused, match="not declared"):
        check_enrolment(BOUND, enrol("staff", "2027-01-01"))
    with pytest.raises(WatchlistRefused, match="30 days"):
        check_enrolment(BOUND, enrol("missing", "2099-01-01"))
    check_enrolment(Settings(), enrol("anything", "2099-01-01"))


def test_watchlist_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="declared twice: fraud"):
        load_settings(environment=False, watchlists=[{"name": "fraud", "purposes": ["a b c"]}] * 2)
    with pytest.raises(ConfigError, match="retention_days above max_retention_days"):
        load_settings(environment=False, watchlists=[{"name": "x", "purposes": ["a b c"], "retention_days": 5000}])
    with pytest.raises(ConfigError, match="purposes"):
        load_settings(environment=False, watchlists=[{"name": "x", "purposes": []}])
