"""Webhook delivery benchmark: deliveries/s and latency from match to verified receipt, through
the real notifier (fan-out, deliveries topic, delivery engine) on the local Kafka, to verifying
receivers on loopback; optionally with one subscriber that hangs every request, to show what it
costs the others (it should cost them nothing).

    .venv/bin/python bench/webhooks.py [--matches 2000] [--subscribers 3] [--slow]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _help import Help  # noqa: E402

from devtools.receiver import Delivery, WebhookReceiver  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.contracts.timeutil import now_iso, parse_iso  # noqa: E402
from facestream.io.http import serve  # noqa: E402
from facestream.io.kafka import delete_topics, producer  # noqa: E402
from facestream.runtime.stage import Record  # noqa: E402
from facestream.services.main import ensure_topics  # noqa: E402
from facestream.services.notifier.stage import NotifierStage  # noqa: E402
from facestream.services.notifier.subscriptions import Subscription, new_secret  # noqa: E402
from tests.helpers import match_result  # noqa: E402


def match(n: int) -> dict[str, Any]:
    image_id = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    candidates = [{"subject_id": f"s{n % 50}", "watchlist": "w", "score": 0.7, "rank": 1}]
    return match_result(image_id, candidates, case_ref="BENCH", occurred_at=now_iso())


async def run(matches: int, subscribers: int, slow: bool) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(
        topic_prefix=prefix,
        app_id=prefix,
        data_dir=Path("/tmp") / prefix,
        webhook_allow_private=("127.0.0.1",),
        crops_port=-1,
        webhook_timeout_s=2.0,
        ops_port=-1,
    )
    await ensure_topics(settings)
    latencies: dict[str, list[float]] = {}
    finished: dict[str, float] = {}
    all_done = asyncio.Event()

    def on_delivery(name: str) -> Any:
        def record(d: Delivery) -> None:
            latencies[name].append(time.time() - parse_iso(d.event["occurred_at"]).timestamp())
            if len(latencies[name]) == matches:
                finished[name] = time.monotonic()
                if len(finished) == subscribers:
                    all_done.set()

        return record

    receivers = []
    for k in range(subscribers):
        name = f"healthy{k}"
        latencies[name] = []
        receivers.append((name, WebhookReceiver(new_secret(), on_delivery=on_delivery(name))))
    for _, r in receivers:
        await r.start()
    hung = 0

    async def hang(request: web.Request) -> web.Response:
        nonlocal hung
        hung += 1
        await asyncio.sleep(30)
        return web.Response(status=204)

    slow_app = web.Application()
    slow_app.router.add_post("/hook", hang)
    slow_runner, slow_port = await serve(slow_app, "127.0.0.1", 0)
    stage = NotifierStage(settings)
    await stage.start()
    prod = producer(settings)
    await prod.start()
    try:
        for name, r in receivers:
            await stage.store.add(Subscription.new(name, r.url, r.secret, all_watchlists=True, max_concurrency=16))
        if slow:
            slow_url = f"http://127.0.0.1:{slow_port}/hook"
            await stage.store.add(
                Subscription.new("slow", slow_url, new_secret(), all_watchlists=True, max_concurrency=4)
            )
        started = time.monotonic()
        pending = []
        for start in range(0, matches, 200):
            batch = [match(n) for n in range(start, min(matches, start + 200))]
            records = [Record(orjson.dumps(m), m["image_id"].encode(), "matches", 0, i) for i, m in enumerate(batch)]
            for outcome in await stage.process(records):
                for out in outcome.outputs:
                    value = orjson.dumps(out.value)
                    pending.append(await prod.send(settings.topic(out.topic), value, key=out.key.encode()))
        await asyncio.gather(*pending)
        produced = time.monotonic() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), 600)
        total = sum(len(v) for v in latencies.values())
        elapsed = max(finished.values(), default=time.monotonic()) - started
        every = sorted(x for v in latencies.values() for x in v)
        p99 = every[min(len(every) - 1, int(0.99 * len(every)))] if every else float("nan")
        print(
            f"{matches} matches x {subscribers} healthy subscribers{' + 1 hanging' if slow else ''}: "
            f"{total} verified deliveries in {elapsed:.2f} s = {total / elapsed:.0f} deliveries/s "
            f"(fan-out and produce {produced:.2f} s)"
        )
        print(
            f"latency match -> verified receipt: p50 {statistics.median(every) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )
        if slow:
            print(
                f"hanging subscriber: {hung} requests held (each until the {settings.webhook_timeout_s:.0f} s timeout)"
            )
        duplicates = sum(r.duplicates for _, r in receivers)
        print(f"signature failures {sum(r.rejected for _, r in receivers)}, duplicates {duplicates}")
    finally:
        await prod.stop()
        await stage.stop()
        for _, r in receivers:
            await r.stop()
        await slow_runner.cleanup()
        await delete_topics(settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    parser.add_argument("--matches", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--slow", action="store_true", help="add a subscriber that hangs every request")
    args = parser.parse_args()
    from facestream.config import load_settings
    from facestream.io.broker import local_broker

    def kafka(action: str) -> int:
        return local_broker(action, load_settings())

    started_kafka = subprocess.call(["bash", str(ROOT / "scripts/kafka.sh"), "status"], stdout=subprocess.DEVNULL) != 0
    if started_kafka:
        kafka("up")
    try:
        asyncio.run(run(args.matches, args.subscribers, args.slow))
    finally:
        if started_kafka:
            kafka("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
