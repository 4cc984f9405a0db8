"""An enrolment's consent record must name a reference, a person and a source, and a retention
term that has not passed and is within the configured maximum; the detector refuses any other
before spending work on the photo, and so does `facestream enroll` before publishing."""

from __future__ import annotations

import datetime as dt

from facestream import client, contracts
from facestream.config import Settings
from facestream.contracts.consent import consent_problem, retention_ends
from facestream.runtime.stage import Record
from facestream.services.detector.stage import DetectorStage

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
GOOD = {
    "lawful_basis": "explicit_consent",
    "consent_ref": "consent/17",
    "retain_until": "2027-12-31",
    "source_attestation": "given in person",
    "enrolled_by": "clerk",
}


def test_the_consent_record_is_checked() -> None:
    assert consent_problem(GOOD, 1095, NOW) is None
    assert consent_problem({**GOOD, "retain_until": "2029-12-01"}, 1095, NOW) is None  # the last allowed day
    cases = {
        "consent_ref": ("   ", "consent.consent_ref is blank"),
        "enrolled_by": ("\t", "consent.enrolled_by is blank"),
        "retain_until": ("2026-12-02", "has passed"),
    }
    for field, (value, message) in cases.items():
        assert message in (consent_problem({**GOOD, field: value}, 1095, NOW) or ""), field
    assert "has passed" in (consent_problem({**GOOD, "retain_until": "2020-01-01"}, 1095, NOW) or "")
    beyond = consent_problem({**GOOD, "retain_until": "2029-12-02"}, 1095, NOW) or ""
    assert "beyond the longest term allowed (1095 days: 2029-12-01)" in beyond
    assert "beyond" in (consent_problem(GOOD, 30, NOW) or "")  # a tighter configured maximum
    # A term may also end at a time: a short one is allowed, one without its UTC offset is not.
    assert consent_problem({**GOOD, "retain_until": "2026-12-02T12:05:00Z"}, 1095, NOW) is None
    assert "has passed" in (consent_problem({**GOOD, "retain_until": "2026-12-02T11:59:00+00:00"}, 1095, NOW) or "")
    assert "UTC offset" in (consent_problem({**GOOD, "retain_until": "2026-12-02T12:05:00"}, 1095, NOW) or "")
    assert retention_ends("2027-01-31") == dt.datetime(2027, 1, 31, tzinfo=dt.UTC)  # erased as the day begins


async def test_the_detector_refuses_before_fetching(settings: Settings) -> None:
    """The photo named does not exist: a refusal for the consent, not a fetch failure, shows that
    the consent was checked first."""
    stage = DetectorStage(settings)
    await stage.start()
    today = dt.datetime.now(dt.UTC).date()
    terms = {
        "passed": (today - dt.timedelta(days=1)).isoformat(),
        "beyond": (today + dt.timedelta(days=settings.max_retention_days + 1)).isoformat(),
    }
    records = []
    for i, (name, until) in enumerate(terms.items()):
        intent = client.enroll_intent(
            "alice",
            "w",
            lawful_basis="explicit_consent",
            consent_ref="consent/1",
            retain_until=until,
            source_attestation="given in person",
            enrolled_by="clerk",
        )
        event = client.submission(f"enrol-{name}", {"uri": "file:///nowhere/a.jpg", "sha256": "0" * 64}, intent, "t")
        records.append(Record(contracts.dumps(event), event["image_id"].encode(), "images", 0, i))
    blank = client.enroll_intent(
        "alice",
        "w",
        lawful_basis="explicit_consent",
        consent_ref="c",
        retain_until=terms["passed"],
        source_attestation="given in person",
        enrolled_by="clerk",
    )
    blank["consent"]["consent_ref"] = "   "
    blank["consent"]["retain_until"] = (today + dt.timedelta(days=30)).isoformat()
    event = client.submission("enrol-blank", {"uri": "file:///nowhere/a.jpg", "sha256": "0" * 64}, blank, "t")
    records.append(Record(contracts.dumps(event), b"enrol-blank", "images", 0, 2))
    try:
        outcomes = await stage.process(records)
    finally:
        await stage.stop()
    reasons = [getattr(o.error, "reason", None) for o in outcomes]
    assert reasons == ["enrolment_rejected"] * 3
    details = [str(o.error) for o in outcomes]
    assert "has passed" in details[0]
    assert "beyond the longest term" in details[1]
    assert "consent_ref is blank" in details[2]
