"""Purpose binding and subscription binding through the whole pipeline on the real broker: what a
watchlist may be searched for, what an enrolment may go into, which subscriber receives which
watchlist's matches; each refusal reaches the dead letters and the audit chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.receiver import WebhookReceiver
from facestream import client
from facestream.services.audit import log as audit_log
from facestream.services.notifier.subscriptions import Subscription, SubscriptionStore, new_secret
from tests.conftest import SAMPLES
from tests.harness import Pipeline
from tests.helpers import enrolment

GALLERY = {p.parent.name: p for p in sorted((SAMPLES / "gallery").rglob("*.jpg"))}
PROBES = {p.parent.name: p for p in sorted((SAMPLES / "probes").rglob("*.jpg"))}
MISSING, FRAUD = "locate a missing person", "fraud investigation"
WATCHLISTS = [
    {"name": "missing", "purposes": [MISSING], "retention_days": 400},
    {"name": "fraud", "purposes": [FRAUD, MISSING]},
]


def search(image_id: str, who: str, purpose: str, settings: Any, watchlists: list[str] | None = None) -> dict[str, Any]:
    intent = client.search_intent(purpose, "CASE-P", "analyst-1", watchlists)
    return client.submission(image_id, client.image_ref(PROBES[who], settings), intent, "tests")


@pytest.fixture
async def bound(kafka: str, tmp_path: Path) -> Any:
    p = Pipeline(tmp_path, [SAMPLES, tmp_path], extra={"watchlists": WATCHLISTS})
    await p.start()
    yield p
    await p.stop()


async def test_searches_reach_only_what_their_purpose_allows(bound: Pipeline) -> None:
    settings = bound.settings
    # A second subscriber, bound to the `missing` watchlist only.
    missing_only = WebhookReceiver(new_secret())
    await missing_only.start()
    store = SubscriptionStore(settings, follow=False)
    await store.start()
    try:
        await store.add(
            Subscription.new("missing-desk", missing_only.url, missing_only.secret, watchlists=("missing",))
        )
    finally:
        await store.stop()
    try:
        plan = {
            "enrol-dad": enrolment("enrol-dad", GALLERY["azure_family1_dad"], settings, watchlist="missing"),
            "enrol-lady": enrolment("enrol-lady", GALLERY["azure_family2_lady"], settings, watchlist="fraud"),
            # Not declared; and kept longer than its watchlist allows (400 days): both refused.
            "enrol-mom": enrolment("enrol-mom", GALLERY["azure_family1_mom"], settings, watchlist="staff"),
            "enrol-man": enrolment(
                "enrol-man", GALLERY["azure_family2_man"], settings, watchlist="missing", retain_until="2029-01-31"
            ),
        }
        for key, event in plan.items():
            await bound.submit(key, event)

        async def enrolled() -> bool:
            matches = [m for m in await bound.events("matches") if m["status"] == "enrolled"]
            letters = [d for d in await bound.events("dlq") if d["key"] in plan]
            return len(matches) >= 2 and len(letters) >= 2

        await bound.wait_for(enrolled, what="two enrolments and two refusals")
        searches = {
            # fraud reaches `fraud` only: the dad (on `missing`) is not found, the lady is.
            "s-dad-fraud": search("s-dad-fraud", "azure_family1_dad", FRAUD, settings),
            "s-lady-fraud": search("s-lady-fraud", "azure_family2_lady", FRAUD, settings),
            # missing-person searches may reach both.
            "s-dad-missing": search("s-dad-missing", "azure_family1_dad", MISSING, settings),
            "s-lady-missing": search("s-lady-missing", "azure_family2_lady", MISSING, settings),
            # Naming a watchlist the purpose may not search, or a purpose no watchlist allows: refused.
            "s-named": search("s-named", "azure_family1_dad", FRAUD, settings, watchlists=["missing"]),
            "s-curious": search("s-curious", "azure_family1_dad", "just curious", settings),
        }
        for key, event in searches.items():
            await bound.submit(key, event)
        state: dict[str, Any] = {}

        async def settled() -> bool:
            state["matches"] = {m["image_id"]: m for m in await bound.events("matches")}
            state["dlq"] = {d["key"]: d for d in await bound.events("dlq")}
            done = {"s-dad-fraud", "s-lady-fraud", "s-dad-missing", "s-lady-missing"} <= set(state["matches"])
            return done and {"s-named", "s-curious"} <= set(state["dlq"]) and len(bound.receiver.deliveries) >= 3

        await bound.wait_for(settled, what="search outcomes and refusals")
        matches, letters = state["matches"], state["dlq"]
        assert letters["enrol-mom"]["reason"] == "watchlist_refused"
        assert "not declared" in letters["enrol-mom"]["detail"]
        assert letters["enrol-man"]["reason"] == "watchlist_refused"
        assert "400 days" in letters["enrol-man"]["detail"]
        assert matches["s-dad-fraud"]["status"] == "no_match"
        assert [c["subject_id"] for c in matches["s-lady-fraud"]["candidates"]] == ["azure_family2_lady"]
        assert [c["subject_id"] for c in matches["s-dad-missing"]["candidates"]] == ["azure_family1_dad"]
        assert [c["subject_id"] for c in matches["s-lady-missing"]["candidates"]] == ["azure_family2_lady"]
        for key in ("s-named", "s-curious"):
            assert letters[key]["reason"] == "purpose_not_allowed"
            assert letters[key]["stage"] == "detector"  # refused before any work on the photo

        # The subscriber bound to `missing` receives its matches and nothing from `fraud`.
        await bound.wait_for(lambda: len(missing_only.deliveries) >= 1, what="the bound subscriber's delivery")
        everything = {d.event["image_id"] for d in bound.receiver.deliveries}
        assert everything == {"s-lady-fraud", "s-dad-missing", "s-lady-missing"}
        assert {d.event["image_id"] for d in missing_only.deliveries} == {"s-dad-missing"}
        assert all(c["watchlist"] == "missing" for d in missing_only.deliveries for c in d.event["candidates"])

        # Each search is audited with the watchlists it reached; each refusal with who asked and why.
        chain: dict[str, list[dict[str, Any]]] = {}

        async def audited() -> bool:
            chain.clear()
            for record in await audit_log.records(settings):
                chain.setdefault(record["entry"]["action"], []).append(record["entry"])
            return len(chain.get("search", [])) >= 4 and len(chain.get("refusal", [])) >= 4

        await bound.wait_for(audited, what="the audit chain")
        reached = {e["refs"]["image_id"]: e["refs"]["watchlists"] for e in chain["search"]}
        assert reached["s-dad-fraud"] == ["fraud"]
        assert reached["s-dad-missing"] == ["fraud", "missing"]
        refused = {e["refs"]["image_id"]: e for e in chain["refusal"]}
        assert refused["s-curious"]["details"]["reason"] == "purpose_not_allowed"
        assert refused["s-curious"]["details"]["purpose"] == "just curious"
        assert refused["s-curious"]["actor"] == "analyst-1"
        assert refused["enrol-mom"]["refs"]["subject_id"] == "azure_family1_mom"
        assert refused["enrol-mom"]["actor"] == "test-suite"
        changes = [e for e in chain.get("subscription_change", []) if e["refs"]["subscription"] == "missing-desk"]
        assert changes
        assert changes[0]["refs"]["watchlists"] == ["missing"]
        assert (await audit_log.check(settings)).ok
    finally:
        await missing_only.stop()
