"""Notifier stage: match.result → one webhook.delivery job per interested subscriber.

The fan-out never waits on a subscriber: it writes jobs to `deliveries` (key: subscription) and
the delivery engine (services/notifier/engine.py), started with the stage, attempts them. For each
subject a job names it notes, in `deliveries.subjects`, that the subscriber was sent it: when the
subject is erased, those subscribers are told (services/notifier/erasures.py). The
stage also runs the crop server (crops.py) whose signed links the payloads carry.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from facestream import contracts
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso, parse_iso
from facestream.crops import submitted
from facestream.ops.logs import get_logger
from facestream.runtime.stage import Outcome, Output, Record
from facestream.services.notifier.crops import CropServer
from facestream.services.notifier.engine import DeliveryEngine
from facestream.services.notifier.erasures import ErasureNotices
from facestream.services.notifier.logic import job_for, payload_for
from facestream.services.notifier.reviews import ReviewNotices
from facestream.services.notifier.subscriptions import SubscriptionStore

log = get_logger(__name__)


class NotifierStage:
    name = "notifier"

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None, engine: bool = True) -> None:
        self.settings = settings
        self.store = SubscriptionStore(settings)
        self.engine = DeliveryEngine(settings, self.store, client) if engine else None
        self.crops = CropServer(settings, self.store) if settings.crops_port >= 0 else None
        self.notices = ErasureNotices(settings, self.store) if engine else None
        self.reviews = ReviewNotices(settings, self.store) if engine else None

    async def start(self) -> None:
        await self.store.start()
        await self.store.seed(self.settings.subscriptions)
        if self.crops is not None:
            await self.crops.start()
        if self.engine is not None:
            await self.engine.start()
        if self.notices is not None:
            await self.notices.start()
        if self.reviews is not None:
            await self.reviews.start()

    async def stop(self) -> None:
        if self.reviews is not None:
            await self.reviews.stop()
        if self.notices is not None:
            await self.notices.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self.crops is not None:
            await self.crops.stop()
        await self.store.stop()

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = [Outcome() for _ in records]
        # Disabled subscriptions get their jobs too: the engine holds them in the subscription's
        # dead letters (reason subscription_disabled) until `enable` and `deliveries replay`.
        subscriptions = self.store.all()
        for outcome, record in zip(outcomes, records, strict=True):
            try:
                match = contracts.loads(record.value, "match.result")
            except Exception as exc:
                outcome.error = exc
                continue
            for sub in subscriptions:
                payload = payload_for(match, sub, self.settings.webhook_event_ttl_s)
                if payload is None:
                    continue
                if self.crops is not None and self.crops.links is not None:
                    expires = parse_iso(payload["expires_at"]).timestamp()
                    payload["probe_crop_url"] = self.crops.links.link(
                        match["event_id"], sub.name, expires, match["image_id"], submitted(match)
                    )
                outcome.outputs.append(Output("deliveries", sub.name, job_for(match, sub, payload)))
                for candidate in payload["candidates"]:  # whom to tell if this subject is erased
                    outcome.outputs.append(
                        Output(
                            "deliveries.subjects",
                            f"{sub.name}/{candidate['subject_id']}",
                            {
                                "schema_version": 1,
                                "event_type": "subject.notified",
                                "subscription": sub.name,
                                "subject_id": candidate["subject_id"],
                                "event_id": match["event_id"],
                                "at": now_iso(),
                            },
                        )
                    )
        return outcomes
