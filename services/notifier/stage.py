"""Notifier stage: match.result → one signed webhook per interested subscriber."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx

from facestream import contracts
from facestream.config import Settings, Subscription
from facestream.logs import get_logger
from facestream.metrics import END_TO_END_SECONDS, WEBHOOK_SECONDS, WEBHOOKS, status_class
from facestream.net import guarded_client
from facestream.pipeline import Outcome, Record
from facestream.timeutil import parse_iso
from services.notifier.logic import deliver, payload_for

log = get_logger(__name__)


class NotifierStage:
    name = "notifier"

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.client = client
        # Bounded concurrency per subscriber: a slow one cannot take every connection.
        self.limits = {s.name: asyncio.Semaphore(8) for s in settings.subscriptions}

    async def start(self) -> None:
        if self.client is None:
            self.client = guarded_client(self.settings.allow_private, self.settings.webhook_timeout_s)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def _deliver(
        self, sub: Subscription, payload: dict[str, object], trace_id: str, submitted_at: str | None
    ) -> BaseException | None:
        assert self.client is not None
        async with self.limits[sub.name]:
            started = time.perf_counter()
            try:
                status = await deliver(
                    self.client,
                    sub,
                    payload,
                    attempts=self.settings.webhook_attempts,
                    backoff_s=self.settings.webhook_backoff_s,
                )
                WEBHOOKS.labels(sub.name, status_class(status)).inc()
                WEBHOOK_SECONDS.labels(sub.name).observe(time.perf_counter() - started)
                if submitted_at:
                    END_TO_END_SECONDS.observe(max(0.0, time.time() - parse_iso(submitted_at).timestamp()))
                log.info(
                    "delivered", subscription=sub.name, event_id=payload["event_id"], trace_id=trace_id, status=status
                )
                return None
            except Exception as exc:
                WEBHOOKS.labels(sub.name, status_class(getattr(exc, "status", None))).inc()
                log.warning(
                    "delivery_failed",
                    subscription=sub.name,
                    event_id=payload["event_id"],
                    trace_id=trace_id,
                    error=str(exc)[:300],
                )
                return exc

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = [Outcome() for _ in records]
        jobs: list[tuple[int, Subscription, asyncio.Task[BaseException | None]]] = []
        for i, record in enumerate(records):
            try:
                match = contracts.loads(record.value, "match.result")
            except Exception as exc:
                outcomes[i].error = exc
                continue
            for sub in self.settings.subscriptions:
                payload = payload_for(match, sub)
                if payload is not None:
                    task = asyncio.create_task(
                        self._deliver(sub, payload, match["trace_id"], match.get("submitted_at"))
                    )
                    jobs.append((i, sub, task))
        for i, sub, task in jobs:
            error = await task
            if error is not None:
                # One dead letter per failed delivery, so a replay reaches only that subscriber.
                outcomes[i].failures.append((sub.name, error))
        return outcomes
