"""The transparency report: counts from audit entries (made as the services make them), and its
HTML in headless Chromium. tests/test_review.py runs `facestream report` on a running pipeline."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from facestream import audit
from facestream.services.audit.report import tally, text, to_html
from tests.conftest import ROOT
from tests.figures import report_figure

NOW = datetime.now(UTC)
SINCE, UNTIL = NOW - timedelta(days=1), NOW + timedelta(days=1)
MATCHES = ["5b0a7f1e-0000-4000-8000-00000000000" + str(i) for i in range(3)]


def entries() -> list[dict[str, Any]]:
    out = []
    for i, (purpose, found) in enumerate([("fraud", 1), ("fraud", 2), ("missing person", 0)]):
        out.append(
            audit.entry(
                "search",
                "analyst",
                "matcher",
                f"s{i}",
                details={"purpose": purpose, "candidates": found, "status": "match" if found else "no_match"},
                match_event_id=MATCHES[i],
                image_id=f"img-{i}",
            )
        )
    out.append(  # long ago: outside the period
        audit.entry("search", "analyst", "matcher", "old", occurred_at="2020-01-01T00:00:00Z", details={"purpose": "x"})
    )
    for who, verdict, match, subject in (
        ("a", "confirm", 0, "s1"),
        ("b", "confirm", 0, "s1"),
        ("a", "reject", 1, "s2"),
    ):
        out.append(
            audit.entry(
                "review_decision",
                who,
                "review",
                f"{who}{match}{subject}",
                details={"decision": verdict},
                match_event_id=MATCHES[match],
                subject_id=subject,
            )
        )
    out.append(audit.entry("erasure", "system:matcher", "matcher", "e1", details={"reason": "retention_expired"}))
    out.append(audit.entry("erasure", "system:matcher", "matcher", "e2", details={"reason": "data subject request"}))
    out.append(audit.entry("enrolment", "clerk", "matcher", "p1", subject_id="s1"))
    for i, (kind, reason) in enumerate(
        [("enroll", "enrolment_ambiguous"), ("enroll", "enrolment_ambiguous"), ("search", "purpose_not_allowed")]
    ):
        out.append(
            audit.entry(
                "refusal", "clerk", "detector", f"r{i}", details={"kind": kind, "reason": reason, "stage": "detector"}
            )
        )
    return out


LETTERS = [
    {"stage": "detector", "occurred_at": NOW.isoformat()},
    {"stage": "detector", "occurred_at": NOW.isoformat()},
    {"stage": "notifier", "occurred_at": NOW.isoformat()},
]


def test_the_report_counts_what_happened_in_the_period() -> None:
    report = tally(entries(), LETTERS, SINCE, UNTIL).as_dict()
    assert report["searches"] == 3
    assert report["searches_by_purpose"] == {"fraud": 2, "missing person": 1}
    assert (report["searches_with_candidates"], report["candidates"]) == (2, 3)
    assert report["reviews"] == {"confirmed": 1, "rejected": 1, "open": 1}
    assert report["erasures_by_reason"] == {"retention_expired": 1, "data subject request": 1}
    assert report["enrolments"] == 1
    assert report["enrolment_refusals_by_reason"] == {"enrolment_ambiguous": 2}
    assert report["search_refusals_by_reason"] == {"purpose_not_allowed": 1}
    assert report["dead_letters_by_stage"] == {"detector": 2, "notifier": 1}
    assert "searches                 3" in text(tally(entries(), LETTERS, SINCE, UNTIL))


async def test_the_html_report_draws_its_charts_in_a_browser(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(to_html(tally(entries(), LETTERS, SINCE, UNTIL)))
    await asyncio.to_thread(browser.get, page.as_uri())
    charts = browser.find_elements(By.CSS_SELECTOR, "figure svg")
    assert len(charts) == 7
    bars = {
        (b.find_element(By.XPATH, "ancestor::figure").get_attribute("id"), b.get_attribute("data-label")): b
        for b in browser.find_elements(By.CSS_SELECTOR, "rect.bar")
    }
    fraud = bars[("searches-by-purpose", "fraud")]
    other = bars[("searches-by-purpose", "missing person")]
    assert fraud.size["width"] == 2 * other.size["width"] > 0  # drawn to scale
    assert bars[("reviews", "confirmed")].get_attribute("data-value") == "1"
    assert bars[("dead-letters", "detector")].is_displayed()
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    assert await asyncio.to_thread(browser.save_screenshot, str(out / "report.png"))
    report_figure(f"transparency report screenshot (headless Chromium): {out / 'report.png'}")
