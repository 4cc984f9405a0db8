"""The live dashboard in a real headless browser (Debian's chromium through selenium): it
loads, shows each stage, and its numbers change while the pipeline processes images. The
screenshot is kept as a test artefact in out/dashboard.png."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline
from tests.test_pipeline_e2e import enrol_gallery, search

STAGES = ["detector", "embedder", "matcher", "notifier"]


def cells(driver: object) -> dict[str, dict[str, str]]:
    from selenium.webdriver.common.by import By

    out = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#stages tbody tr"):  # type: ignore[attr-defined]
        stage = row.get_attribute("data-stage")
        out[stage] = {c.get_attribute("class").split()[0]: c.text for c in row.find_elements(By.TAG_NAME, "td")}
    return out


async def test_dashboard_shows_every_stage_live(kafka: str, tmp_path: Path, browser: object) -> None:
    pipeline = Pipeline(tmp_path, [SAMPLES], extra={"lag_interval_s": 1})
    await pipeline.start()
    try:
        url = f"http://127.0.0.1:{pipeline.ops_ports['all']}"

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(url + "/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await pipeline.wait_for(ready, what="the worker's readiness")
        await asyncio.to_thread(browser.get, url + "/")  # type: ignore[attr-defined]

        async def rows() -> dict[str, dict[str, str]]:
            return await asyncio.to_thread(cells, browser)

        await pipeline.wait_for(lambda: _has_stages(rows), what="a row per stage")
        before = await rows()
        assert sorted(before) == STAGES
        await enrol_gallery(pipeline)
        probes = sorted((SAMPLES / "probes").rglob("*.jpg"))
        for i, path in enumerate(probes):
            await pipeline.submit(f"dash-{i}", search(f"dash-{i}", path, pipeline.settings))
        await pipeline.submit("bad-json", b"{not json")  # one dead letter, shown by its reason
        await pipeline.wait_for(lambda: len(pipeline.receiver.deliveries) >= 9, what="webhooks")

        async def moved() -> bool:
            now = await rows()
            # The page refreshes on its own clock: wait until it shows every probe at the detector.
            return (
                all(int(now[s]["consumed"]) > int(before[s]["consumed"]) for s in STAGES)
                and int(now["detector"]["consumed"]) >= len(probes) + 5
            )

        await pipeline.wait_for(moved, what="every stage's numbers to change on the page")
        after = await rows()
        assert float(after["detector"]["p50"]) > 0
        assert int(after["detector"]["consumed"]) >= len(probes) + 5
        from selenium.webdriver.common.by import By

        def webhook_row() -> dict[str, str]:
            row = browser.find_element(By.CSS_SELECTOR, '#webhooks tr[data-subscription="test-receiver"]')  # type: ignore[attr-defined]
            return {c.get_attribute("class").split()[0]: c.text for c in row.find_elements(By.TAG_NAME, "td")}

        async def all_delivered() -> bool:
            # The page's webhook table refreshes on its own clock too: wait for its next refresh.
            return int(float((await asyncio.to_thread(webhook_row))["delivered"])) >= 9

        await pipeline.wait_for(all_delivered, what="the webhook table to show every delivery")
        webhooks = await asyncio.to_thread(webhook_row)
        assert int(float(webhooks["delivered"])) >= 9
        assert int(float(webhooks["dead_lettered"])) == 0

        def letters() -> list[str]:
            rows = browser.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr[data-reason]")  # type: ignore[attr-defined]
            return [row.text for row in rows]

        async def letter_shown() -> bool:
            return bool(await asyncio.to_thread(letters))

        await pipeline.wait_for(letter_shown, what="the dead letter on the page")
        assert await asyncio.to_thread(letters) == ["detector malformed_event 1"]
        lines = await asyncio.to_thread(browser.find_elements, By.CSS_SELECTOR, "#lag-chart polyline")  # type: ignore[attr-defined]
        assert len(lines) == 4
        # End-to-end latency beside the lag: p50 and p99 over the last 30 s, estimated, in ms.
        legend = (await asyncio.to_thread(browser.find_element, By.ID, "e2e-legend")).text  # type: ignore[attr-defined]
        assert re.search(r"p50 \d+ ms \(est\.\)", legend), legend
        assert re.search(r"p99 \d+ ms \(est\.\)", legend), legend
        quantiles = await asyncio.to_thread(browser.find_elements, By.CSS_SELECTOR, "#e2e-chart polyline")  # type: ignore[attr-defined]
        assert [q.get_attribute("data-quantile") for q in quantiles] == ["p50", "p99"]
        assert all(q.get_attribute("points") for q in quantiles)
        out = ROOT / "out"
        out.mkdir(exist_ok=True)
        assert await asyncio.to_thread(browser.save_screenshot, str(out / "dashboard.png"))  # type: ignore[attr-defined]
    finally:
        await pipeline.stop()


async def _has_stages(rows: object) -> bool:
    return len(await rows()) == len(STAGES)  # type: ignore[operator]
