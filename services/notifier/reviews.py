"""Review notices: each reviewer's decision reaches the subscribers that receive its candidate's
watchlist as a signed `face.match.reviewed` webhook, with the candidate's review status after it.

A consumer group (`<app_id>-review-notices`) reads the decisions (`reviews`, keyed by match). The
status after a decision depends on the decisions before it, so on start the whole topic is folded
first (facestream.review: the same fold the review board applies); then each decision is applied
in order and, if it counted, one delivery job per subscriber is written (webhook id from the
decision: a decision read twice gives the same webhook). The offset is committed after the jobs.
"""

from __future__ import annotations

from typing import Any

from facestream import contracts, review
from facestream.config import Settings
from facestream.errors import RejectedEvent
from facestream.io.kafka import read_topic
from facestream.ops.logs import get_logger
from facestream.services.notifier.logic import REVIEWED_TYPE, job_for, reviewed_payload
from facestream.services.notifier.notices import NoticeFollower
from facestream.services.notifier.subscriptions import SubscriptionStore

log = get_logger(__name__)


class ReviewNotices(NoticeFollower):
    topic = review.TOPIC
    name = "review-notices"

    def __init__(self, settings: Settings, store: SubscriptionStore) -> None:
        super().__init__(settings, store)
        self.ledger = review.Ledger()

    async def prepare(self) -> None:
        for record in await read_topic(self.settings, self.settings.topic(review.TOPIC)):
            decision = self._decision(record)
            if decision is not None:
                self.ledger.apply(decision)

    @staticmethod
    def _decision(record: Any) -> dict[str, Any] | None:
        try:
            return contracts.loads(record.value, "review.decision")
        except RejectedEvent:
            return None

    async def handle(self, record: Any) -> None:
        decision = self._decision(record)
        if decision is None:  # not a decision the review service wrote: to the dead letters
            await self.refuse(record, RejectedEvent("not a review.decision", reason="malformed_event"))
            return
        counted, after = self.ledger.apply(decision)
        if not counted:
            return  # a second confirmation by the same reviewer, or after the candidate was settled
        payload = reviewed_payload(decision, after, self.settings.webhook_event_ttl_s)
        told = []
        for sub in self.store.active():
            if sub.wants_type(REVIEWED_TYPE) and sub.wants(decision["watchlist"], decision["score"]):
                job = job_for(payload, sub, payload)
                contracts.validate("webhook.delivery", job)
                await self.out.send_and_wait(
                    self.settings.topic("deliveries"), contracts.dumps(job), key=sub.name.encode()
                )
                told.append(sub.name)
        log.info(
            "review_notices_sent", match_event_id=decision["match_event_id"], status=after.status, subscriptions=told
        )
