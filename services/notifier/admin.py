"""Operator actions on deliveries: read the delivery log, replay a subscription's dead letters."""

from __future__ import annotations

from typing import Any

import orjson

from facestream import audit, contracts
from facestream.config import Settings
from facestream.contracts.timeutil import iso, now_iso, parse_iso
from facestream.io.kafka import producer, read_topic, running
from facestream.services.notifier.topics import dlq_topic


async def delivery_log(
    settings: Settings,
    subscription: str | None = None,
    webhook_ids: set[str] | None = None,
    outcome: str | None = None,
) -> list[dict[str, Any]]:
    """Entries of the delivery log, oldest first, filtered by the arguments given."""
    entries = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("deliveries.log"))]
    entries = [
        e
        for e in entries
        if (subscription is None or e["subscription"] == subscription)
        and (not webhook_ids or e["webhook_id"] in webhook_ids)
        and (outcome is None or e["outcome"] == outcome)
    ]
    return sorted(entries, key=lambda e: e["at"])


async def dead_letters(settings: Settings, subscription: str) -> list[dict[str, Any]]:
    """Every job in the subscription's dead-letter topic."""
    return [orjson.loads(r.value) for r in await read_topic(settings, dlq_topic(settings, subscription))]


async def replay(
    settings: Settings,
    subscription: str,
    webhook_ids: set[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    actor: str = "system:notifier",
) -> list[dict[str, Any]]:
    """Send dead-lettered deliveries of `subscription` again, with their webhook ids unchanged and
    a fresh set of attempts. With `webhook_ids`: just those, wherever they are in the topic. With
    `since` and/or `until` (epoch seconds): those dead-lettered in that time. Otherwise: those
    dead-lettered since the last such replay (a consumer group keeps the place). Expired ones are
    replayed too, and are dead-lettered again as expired: late is never fresh. Audited as done by
    `actor`."""
    topic = dlq_topic(settings, subscription)
    if webhook_ids is not None:
        records = [r for r in await read_topic(settings, topic) if orjson.loads(r.value)["webhook_id"] in webhook_ids]
    elif since is not None or until is not None:
        records = [
            r
            for r in await read_topic(settings, topic, since=since)
            if (since is None or parse_iso(orjson.loads(r.value)["dead_at"]).timestamp() >= since)
            and (until is None or parse_iso(orjson.loads(r.value)["dead_at"]).timestamp() < until)
        ]
    else:
        records = await read_topic(settings, topic, group_id=f"{settings.app_id}-replay-{subscription}")
    jobs: dict[str, dict[str, Any]] = {}
    for r in records:
        letter = orjson.loads(r.value)
        for key in ("reason", "dead_at", "last_status", "last_error"):
            letter.pop(key, None)
        now = now_iso()
        jobs[letter["webhook_id"]] = {**letter, "attempt": 0, "due_at": now, "replayed_at": now}
    async with running(producer(settings)) as prod:
        if jobs:
            entry = audit.entry(
                "replay",
                actor,
                "notifier",
                f"{subscription}/{now_iso()}/{','.join(sorted(jobs))}",
                details={
                    "replayed": len(jobs),
                    "by": "ids" if webhook_ids is not None else "time" if since or until else "since last replay",
                    "since": iso(since) if since is not None else None,
                    "until": iso(until) if until is not None else None,
                },
                subscription=subscription,
            )
            await audit.send(settings, prod, entry)
        for job in jobs.values():
            contracts.validate("webhook.delivery", job)
            await prod.send_and_wait(settings.topic("deliveries"), contracts.dumps(job), key=subscription.encode())
    return list(jobs.values())
