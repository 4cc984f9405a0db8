"""Human review: the two-person rule as a fold, and through the running pipeline: the API's
pending list, decisions and refusals, the signed `face.match.reviewed` webhooks, the audit
entries, the command line, and the review page in headless Chromium."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from facestream import contracts
from facestream.review import Ledger
from facestream.services.audit import log as audit_log
from facestream.services.main import main
from tests.conftest import ROOT, SAMPLES
from tests.figures import report_figure
from tests.harness import Pipeline
from tests.helpers import api_knows, new_token
from tests.test_pipeline_e2e import enrol_gallery, search

PROBES = {p.parent.name: p for p in sorted((SAMPLES / "probes").rglob("*.jpg"))}
MATCH = "7f1c2d3e-0000-4000-8000-000000000001"


def decision(reviewer: str, verdict: str, n: int, subject: str = "s") -> dict[str, Any]:
    return {
        "event_id": f"d-{n}",
        "match_event_id": MATCH,
        "subject_id": subject,
        "reviewer": reviewer,
        "decision": verdict,
    }


def test_two_different_reviewers_confirm_and_one_rejection_is_final() -> None:
    ledger = Ledger()
    assert ledger.apply(decision("a", "confirm", 1)) == (True, ledger.of(MATCH, "s"))
    assert ledger.of(MATCH, "s").status == "confirming"
    assert ledger.apply(decision("a", "confirm", 2))[0] is False  # the same reviewer twice does not count
    assert ledger.of(MATCH, "s").status == "confirming"
    assert ledger.apply(decision("b", "confirm", 3))[0] is True
    assert ledger.of(MATCH, "s").describe() == {"status": "confirmed", "confirmed_by": ["a", "b"], "rejected_by": None}
    assert ledger.apply(decision("c", "reject", 4))[0] is False  # settled: later decisions change nothing

    other = Ledger()
    other.apply(decision("a", "confirm", 1, "t"))
    other.apply(decision("b", "reject", 2, "t"))
    assert other.of(MATCH, "t").status == "rejected"  # a rejection by either is final
    assert other.apply(decision("c", "confirm", 3, "t"))[0] is False
    # Read twice (at-least-once): applied once, and reported as it was the first time.
    assert other.apply(decision("b", "reject", 2, "t")) == (True, other.of(MATCH, "t"))
    assert other.of(MATCH, "t").describe() == {"status": "rejected", "confirmed_by": ["a"], "rejected_by": "b"}


@pytest.fixture
async def reviewed(kafka: str, tmp_path: Path) -> AsyncIterator[tuple[Pipeline, dict[str, str], str]]:
    """A pipeline with the gallery enrolled and two probes searched (two matches waiting for
    review), and a token per person: two reviewers, an auditor, a publisher."""
    pipeline = Pipeline(tmp_path, [SAMPLES])
    await pipeline.start()
    try:
        await enrol_gallery(pipeline)
        for who in ("azure_family1_dad", "azure_family2_lady"):
            await pipeline.submit(f"r-{who}", search(f"r-{who}", PROBES[who], pipeline.settings))
        tokens = {}
        for name, role in (("reviewer-a", "reviewer"), ("reviewer-b", "reviewer"), ("audit-office", "auditor")):
            tokens[name] = (await new_token(pipeline.settings, name, [role]))[1]
        tokens["publisher"] = (await new_token(pipeline.settings, "uploader", ["publisher"]))[1]
        api = f"http://127.0.0.1:{pipeline.api_ports['all']}"
        await pipeline.wait_for(lambda: api_knows(api, *tokens.values()), what="the API with the tokens")

        async def both_pending() -> bool:
            async with httpx.AsyncClient(base_url=api, trust_env=False, timeout=10) as http:
                answer = await http.get("/v1/reviews", headers={"Authorization": f"Bearer {tokens['reviewer-a']}"})
            return answer.status_code == 200 and len(answer.json()) == 2

        await pipeline.wait_for(both_pending, what="two matches on the review board")
        yield pipeline, tokens, api
    finally:
        await pipeline.stop()


async def test_two_reviewers_confirm_one_rejects_and_subscribers_hear_each(
    reviewed: tuple[Pipeline, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, tokens, api = reviewed

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    async with httpx.AsyncClient(base_url=api, trust_env=False, timeout=30) as http:
        cases = {c["image_id"]: c for c in (await http.get("/v1/reviews", headers=auth("reviewer-a"))).json()}
        dad, lady = cases["r-azure_family1_dad"], cases["r-azure_family2_lady"]
        assert dad["purpose"] == "end-to-end test"
        assert dad["operating_point"]["gallery_size"] == 5
        assert dad["candidates"][0]["review"]["status"] == "pending"
        assert (await http.get("/v1/reviews", headers=auth("publisher"))).status_code == 403

        crop = await http.get(f"/v1/reviews/{dad['event_id']}/crop", headers=auth("reviewer-a"))
        assert crop.status_code == 200
        face = cv2.imdecode(np.frombuffer(crop.content, np.uint8), cv2.IMREAD_COLOR)
        assert face.shape == (112, 112, 3)

        async def decide(name: str, case: dict[str, Any], verdict: str) -> httpx.Response:
            body = {"subject_id": case["candidates"][0]["subject_id"], "decision": verdict, "note": f"{name} looked"}
            return await http.post(f"/v1/reviews/{case['event_id']}/decisions", json=body, headers=auth(name))

        first = await decide("reviewer-a", dad, "confirm")
        assert first.status_code == 201, first.text
        assert first.json()["review"] == {
            "status": "confirming",
            "confirmed_by": ["token:reviewer-a"],
            "rejected_by": None,
        }
        again = await decide("reviewer-a", dad, "confirm")
        assert again.status_code == 409
        assert "someone else" in again.json()["detail"]
        second = await decide("reviewer-b", dad, "confirm")
        assert second.json()["review"]["status"] == "confirmed"
        assert (await decide("reviewer-b", dad, "reject")).status_code == 409  # settled
        assert (await decide("reviewer-a", lady, "reject")).json()["review"]["status"] == "rejected"
        late = await decide("reviewer-b", lady, "confirm")
        assert (late.status_code, late.json()["detail"]) == (409, "already rejected")
        assert (await http.get("/v1/reviews", headers=auth("reviewer-b"))).json() == []
        shown = (await http.get(f"/v1/reviews/{dad['event_id']}", headers=auth("audit-office"))).json()
        assert shown["candidates"][0]["review"]["confirmed_by"] == ["token:reviewer-a", "token:reviewer-b"]

    # Each decision that counted reaches the subscriber, signed, with the status after it.
    def reviewed_events() -> list[dict[str, Any]]:
        return [d.event for d in pipeline.receiver.deliveries if d.event["type"] == "face.match.reviewed"]

    await pipeline.wait_for(lambda: len(reviewed_events()) >= 3, what="three face.match.reviewed webhooks")
    events = sorted(reviewed_events(), key=lambda e: e["occurred_at"])
    assert [(e["image_id"], e["reviewer"], e["status"]) for e in events] == [
        ("r-azure_family1_dad", "token:reviewer-a", "confirming"),
        ("r-azure_family1_dad", "token:reviewer-b", "confirmed"),
        ("r-azure_family2_lady", "token:reviewer-a", "rejected"),
    ]
    assert all("note" not in e for e in events)  # the reviewer's words stay inside
    for job in await pipeline.events("deliveries"):
        contracts.validate("webhook.delivery", job)

    # Decisions and the crop fetch are audited under the reviewers' tokens.
    chain: dict[str, list[dict[str, Any]]] = {}

    async def audited() -> bool:
        chain.clear()
        for record in await audit_log.records(pipeline.settings):
            chain.setdefault(record["entry"]["action"], []).append(record["entry"])
        return len(chain.get("review_decision", [])) >= 3

    await pipeline.wait_for(audited, what="the decisions in the audit chain")
    assert sorted(e["actor"] for e in chain["review_decision"]) == ["token:reviewer-a"] * 2 + ["token:reviewer-b"]
    assert "token:reviewer-a" in {e["actor"] for e in chain["crop_fetch"]}

    # The command line sees the same board: nothing pending, the decisions shown.
    config = str(pipeline.config)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["--config", config, "review", "pending"]) == 0
    assert capsys.readouterr().out.strip() == ""
    assert await asyncio.to_thread(main, ["--config", config, "review", "show", dad["event_id"]]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"][0]["review"]["status"] == "confirmed"
    # ... and the transparency report counts the period's searches, enrolments and reviews.
    today = datetime.now(UTC).date()
    period = ["--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=1))]
    assert await asyncio.to_thread(main, ["--config", config, "report", *period, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["searches"], report["searches_with_candidates"], report["enrolments"]) == (2, 2, 5)
    assert report["searches_by_purpose"] == {"end-to-end test": 2}
    assert report["reviews"] == {"confirmed": 1, "rejected": 1, "open": 0}


async def test_the_review_page_shows_the_probe_and_takes_a_decision(
    reviewed: tuple[Pipeline, dict[str, str], str], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    pipeline, tokens, api = reviewed
    await asyncio.to_thread(browser.get, f"{api}/review")
    field = await asyncio.to_thread(browser.find_element, By.ID, "token")
    await asyncio.to_thread(field.send_keys, tokens["reviewer-a"] + "\n")

    def rows() -> list[Any]:
        return list(browser.find_elements(By.CSS_SELECTOR, "#pending tbody tr"))

    await pipeline.wait_for(lambda: len(rows()) == 2, what="the pending matches on the page")
    await asyncio.to_thread(rows()[0].click)

    def probe_loaded() -> bool:
        return bool(
            browser.execute_script("const i = document.getElementById('probe'); return i.complete && i.naturalWidth")
        )

    await pipeline.wait_for(probe_loaded, what="the probe crop on the page")
    assert browser.execute_script("return document.getElementById('probe').naturalWidth") == 112
    operating = browser.find_element(By.ID, "operating").text
    assert "threshold" in operating
    assert "false-positive identification rate" in operating
    candidate = browser.find_element(By.CSS_SELECTOR, "#candidates tbody tr")
    assert float(candidate.find_elements(By.TAG_NAME, "td")[3].text) > 0
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    await asyncio.to_thread(candidate.find_element(By.CSS_SELECTOR, "button.confirm").click)

    def status() -> str:
        return str(browser.find_element(By.CSS_SELECTOR, "#candidates tbody tr td.status").text)

    await pipeline.wait_for(lambda: status().startswith("confirming"), what="the decision on the page")
    assert status() == "confirming by token:reviewer-a"
    assert await asyncio.to_thread(browser.save_screenshot, str(out / "review.png"))
    report_figure(f"review page screenshot (headless Chromium): {out / 'review.png'}")
