"""Webhook delivery on the real local Kafka with real HTTP subscribers on loopback: retries through
the retry topics, isolation, 410/429/Retry-After, dead letters and replay, expiry, rotation,
restarts. Schedules are short (tenths of a second) so nothing sleeps for long."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from facestream.contracts.timeutil import parse_iso
from facestream.errors import ConfigError
from facestream.io.kafka import TopicSpec, create_topics
from facestream.services.notifier.logic import job_for, payload_for
from facestream.services.notifier.subscriptions import Subscription, SubscriptionStore
from facestream.webhooks import verify_webhook
from tests.delivery_rig import LOOPBACK, Subscriber, match, notifier


async def test_every_match_reaches_every_matching_subscriber_once(tmp_path: Path, kafka: str) -> None:
    """Flaky (503 twice), slow (hangs past the timeout once), healthy and filtered subscribers:
    each gets each match meant for it; retries keep the webhook id; signatures verify."""
    flaky = await Subscriber([503, 503]).start()
    slow = await Subscriber([("hang", 3.0)]).start()
    healthy = await Subscriber().start()
    staff_only = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("flaky", flaky)
            await rig.add("slow", slow)
            await rig.add("healthy", healthy)
            await rig.add("staff", staff_only, watchlists=("staff",))
            matches = [match(i, watchlist="staff" if i % 3 == 0 else "missing") for i in range(9)]
            await rig.publish(*matches)
            every = {f"msg_{m['event_id'].replace('-', '')}" for m in matches}
            staff = {
                f"msg_{m['event_id'].replace('-', '')}" for m in matches if m["candidates"][0]["watchlist"] == "staff"
            }
            await rig.wait_for(
                lambda: (
                    all(set(s.delivered()) == every for s in (flaky, slow, healthy))
                    and set(staff_only.delivered()) == staff
                ),
                what="every delivery",
            )
            log = await rig.log()
    finally:
        for s in (flaky, slow, healthy, staff_only):
            await s.stop()
    for s in (flaky, slow, healthy, staff_only):
        assert s.unverified == 0
        for webhook_id, payloads in s.delivered().items():
            assert all(p == payloads[0] for p in payloads), "one logical delivery per webhook id"
            assert {a.headers["webhook-id"] for a in s.attempts(webhook_id)} == {webhook_id}
    assert sorted(a.answered for a in flaky.arrivals) == [204] * len(every) + [503, 503]
    outcomes = [(e["subscription"], e["outcome"], e["reason"]) for e in log]
    assert outcomes.count(("flaky", "retry_scheduled", "http_503")) == 2
    assert outcomes.count(("slow", "retry_scheduled", "timeout")) == 1
    assert sum(1 for e in log if e["outcome"] == "delivered") == 3 * len(every) + len(staff)


async def test_a_slow_subscriber_does_not_delay_a_healthy_one(tmp_path: Path, kafka: str) -> None:
    """The slow subscriber holds every request for 5 s (past the 1 s timeout); every delivery to
    the healthy one arrives while the slow one's first attempts are still hanging."""
    slow = await Subscriber(then=("hang", 5.0)).start()
    healthy = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka, webhook_timeout_s=4.0) as rig:
            await rig.add("slow", slow, max_concurrency=1)
            await rig.add("healthy", healthy)
            started = time.monotonic()
            await rig.publish(*[match(i) for i in range(20)])
            await rig.wait_for(lambda: len(healthy.delivered()) == 20, what="healthy deliveries")
            healthy_done = time.monotonic()
            slow_requests = len(slow.arrivals)  # recorded when answered: none can be yet
    finally:
        await slow.stop()
        await healthy.stop()
    assert slow_requests == 0
    assert healthy_done - started < 4.0, "healthy deliveries waited for the slow subscriber's timeout"


async def test_retry_after_is_honoured_as_a_minimum(tmp_path: Path, kafka: str) -> None:
    busy = await Subscriber([(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})]).start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("busy", busy)
            await rig.publish(match(1))
            await rig.wait_for(lambda: len(busy.delivered()) == 1, what="delivery after Retry-After")
    finally:
        await busy.stop()
    times = [a.at for a in busy.arrivals]
    assert [a.answered for a in busy.arrivals] == [429, 503, 204]
    # The schedule says 0.3 s then 0.6 s; Retry-After asks for 1 s: the 1.2 s tier is used.
    assert times[1] - times[0] >= 1.0
    assert times[2] - times[1] >= 1.0


async def test_410_disables_the_subscription_and_replay_redelivers_after_enable(tmp_path: Path, kafka: str) -> None:
    gone = await Subscriber([410]).start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("gone", gone)
            first = match(1)
            await rig.publish(first)
            await rig.wait_for(lambda: len(gone.arrivals) == 1, what="the 410")
            await rig.wait_for(lambda: rig.dead("gone"), what="the dead letter")
            sub = rig.store.get("gone")
            assert sub is not None
            assert sub.state == "disabled"
            assert "410" in sub.disabled_reason
            [letter] = await rig.dead("gone")
            assert letter["reason"] == "gone"
            # Matches made while it is disabled are held, not lost (a maintenance window).
            held = [match(i) for i in range(2, 6)]
            await rig.publish(*held)

            async def all_held() -> bool:
                return len(await rig.dead("gone")) == 1 + len(held)

            await rig.wait_for(all_held, what="the matches made while disabled, held")
            letters = await rig.dead("gone")
            assert sorted(x["reason"] for x in letters[1:]) == ["subscription_disabled"] * len(held)
            assert len(gone.arrivals) == 1  # nothing was sent while disabled
            await rig.store.enable("gone")
            from facestream.services.notifier.admin import replay

            # By the time they were dead-lettered (what `POST /v1/subscriptions/{name}/replay` takes).
            cut = parse_iso(letters[1]["dead_at"]).timestamp()
            later = await replay(rig.settings, "gone", since=cut)
            assert sorted(j["webhook_id"] for j in later) == sorted(x["webhook_id"] for x in letters[1:])
            earlier = await replay(rig.settings, "gone", until=cut)
            assert [j["webhook_id"] for j in earlier] == [letter["webhook_id"]]
            replayed = await replay(rig.settings, "gone")
            assert sorted(j["webhook_id"] for j in replayed) == sorted(x["webhook_id"] for x in letters)
            await rig.wait_for(lambda: len(gone.delivered()) == 1 + len(held), what="the replayed deliveries")
            assert await replay(rig.settings, "gone") == []  # each dead letter is replayed once
    finally:
        await gone.stop()
    assert set(gone.delivered()) == {x["webhook_id"] for x in letters}
    assert gone.delivered()[letter["webhook_id"]][0]["event_id"] == first["event_id"]


async def test_exhausted_and_refused_deliveries_are_dead_lettered_per_subscription(tmp_path: Path, kafka: str) -> None:
    failing = await Subscriber(then=500).start()
    rejecting = await Subscriber(then=400).start()
    moved = await Subscriber(then=(307, {"Location": "http://127.0.0.1:9/elsewhere"})).start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("failing", failing)
            await rig.add("rejecting", rejecting)
            await rig.add("moved", moved)
            await rig.publish(match(1))
            for name in ("failing", "rejecting", "moved"):
                await rig.wait_for(lambda n=name: rig.dead(n), what=f"{name} dead letter")  # type: ignore[misc]
            reasons = {n: [d["reason"] for d in await rig.dead(n)] for n in ("failing", "rejecting", "moved")}
            log = await rig.log("failing")
    finally:
        for s in (failing, rejecting, moved):
            await s.stop()
    assert reasons == {"failing": ["exhausted"], "rejecting": ["rejected"], "moved": ["redirect"]}
    assert len(failing.arrivals) == 4  # the schedule has four attempts
    assert (len(rejecting.arrivals), len(moved.arrivals)) == (1, 1)
    assert [e["outcome"] for e in log] == ["retry_scheduled"] * 3 + ["dead_lettered"]
    assert [e["attempt"] for e in log] == [1, 2, 3, 4]
    assert all(e["http_status"] == 500 and e["latency_ms"] is not None for e in log)


async def test_private_endpoint_is_refused_at_connection_time(tmp_path: Path, kafka: str) -> None:
    """Registered while loopback was allowed; the notifier that delivers does not allow it."""
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka, webhook_allow_private=()) as rig:
            sub = Subscription.new("internal", receiver.url, receiver.secret, all_watchlists=True)
            with pytest.raises(ConfigError, match="non-public"):
                await rig.store.add(sub)  # refused at registration too
            registrar = SubscriptionStore(
                rig.settings.model_copy(update={"webhook_allow_private": LOOPBACK}), follow=False
            )
            await registrar.start()
            await registrar.add(sub)
            await registrar.stop()
            await rig.wait_for(lambda: rig.store.get("internal") is not None, what="the notifier to see it")
            await rig.publish(match(1))
            await rig.wait_for(lambda: rig.dead("internal"), what="the refusal")
            [letter] = await rig.dead("internal")
    finally:
        await receiver.stop()
    assert letter["reason"] == "unsafe_destination"
    assert "127.0.0.1" in letter["last_error"]
    assert receiver.arrivals == []


async def test_expired_matches_are_dead_lettered_not_sent_late(tmp_path: Path, kafka: str) -> None:
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka, webhook_event_ttl_s=60.0) as rig:
            await rig.add("late", receiver)
            await rig.publish(match(1, occurred_at="2026-01-01T00:00:00Z"), match(2))
            await rig.wait_for(lambda: rig.dead("late"), what="the expired dead letter")
            await rig.wait_for(lambda: len(receiver.delivered()) == 1, what="the fresh delivery")
            [letter] = await rig.dead("late")
    finally:
        await receiver.stop()
    assert letter["reason"] == "expired"
    assert letter["payload"]["expires_at"] == "2026-01-01T00:01:00.000Z"
    assert len(receiver.arrivals) == 1


async def test_rotation_signs_with_both_secrets_until_the_old_one_retires(tmp_path: Path, kafka: str) -> None:
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("rotating", receiver)
            old = receiver.secret
            _, new = await rig.store.rotate_secret("rotating", grace_s=3600)
            await rig.publish(match(1))
            await rig.wait_for(lambda: len(receiver.arrivals) == 1, what="delivery during rotation")
            during = receiver.arrivals[0]
            _, newest = await rig.store.rotate_secret("rotating", grace_s=0)
            await rig.publish(match(2))
            await rig.wait_for(lambda: len(receiver.arrivals) == 2, what="delivery after rotation")
            after = receiver.arrivals[1]
    finally:
        await receiver.stop()
    assert len(during.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        assert verify_webhook(secret, during.body, during.headers)["type"] == "face.match.candidates"
    assert len(after.headers["webhook-signature"].split()) == 1
    assert verify_webhook(newest, after.body, after.headers)


async def test_a_notifier_restarted_mid_retry_resumes_the_pending_retry(tmp_path: Path, kafka: str) -> None:
    """The subscriber is down (nothing listens on its port); the first attempt fails and a retry
    is scheduled; the notifier stops before it is due, the subscriber comes up, and a new
    notifier delivers the retry from the retry topic with the same webhook id."""
    receiver = await Subscriber().start()
    await receiver.stop()  # keeps its port, now closed
    async with notifier(tmp_path, kafka, webhook_schedule_s=(0.0, 2.0, 4.0)) as rig:
        await rig.add("down", receiver)
        first = match(1)
        await rig.publish(first)

        async def retry_scheduled() -> bool:
            return any(e["outcome"] == "retry_scheduled" for e in await rig.log("down"))

        await rig.wait_for(retry_scheduled, what="the scheduled retry")
        await rig.restart(between=receiver.start)
        try:
            await rig.wait_for(lambda: len(receiver.delivered()) == 1, what="the retry after the restart")

            async def logged() -> bool:  # the log entry is written after the request is answered
                return len(await rig.log("down")) >= 2

            await rig.wait_for(logged, what="the delivery's log entry")
        finally:
            await receiver.stop()
        log = await rig.log("down")
    assert [(e["outcome"], e["reason"]) for e in log] == [("retry_scheduled", "connection_error"), ("delivered", None)]
    assert list(receiver.delivered()) == [f"msg_{first['event_id'].replace('-', '')}"]


async def test_a_backlog_beyond_the_limit_is_deferred_not_held(tmp_path: Path, kafka: str) -> None:
    """One request at a time, at most two waiting: the rest are parked in the first retry tier
    without spending an attempt, and every delivery still arrives."""
    slow = await Subscriber(then=("hang", 0.3)).start()
    try:
        async with notifier(tmp_path, kafka, webhook_max_pending=2, webhook_timeout_s=2.0) as rig:
            await rig.add("slow", slow, max_concurrency=1)
            await rig.publish(*[match(i) for i in range(6)])
            await rig.wait_for(lambda: len(slow.delivered()) == 6, what="every delivery")
            log = await rig.log("slow")
    finally:
        await slow.stop()
    deferred = [e for e in log if e["outcome"] == "deferred"]
    assert deferred
    assert all(e["attempt"] == 0 and e["reason"] == "busy" for e in deferred)
    assert sum(1 for e in log if e["outcome"] == "delivered") == 6
    assert len(slow.arrivals) == 6  # deferral is not an attempt


async def test_rate_limit_spaces_requests(tmp_path: Path, kafka: str) -> None:
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("limited", receiver, rate_per_s=5.0)
            await rig.publish(*[match(i) for i in range(10)])
            await rig.wait_for(lambda: len(receiver.delivered()) == 10, what="every delivery")
    finally:
        await receiver.stop()
    times = sorted(a.at for a in receiver.arrivals)
    # A burst of five, then one every 0.2 s.
    assert times[-1] - times[0] >= 0.9


async def test_retries_waiting_in_a_tier_the_schedule_no_longer_has_are_delivered(tmp_path: Path, kafka: str) -> None:
    """An operator shortens the schedule while retries wait in its 7 s tier: the engine reads
    every retry topic, so they are still attempted (and then follow the new schedule)."""
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("cases", receiver)
            probe = match(1)
            payload = payload_for(probe, rig.store.get("cases"), rig.settings.webhook_event_ttl_s)
            job = {**job_for(probe, rig.store.get("cases"), payload or {}), "attempt": 2}
            old_tier = rig.settings.topic("deliveries.retry.7s")
            await create_topics(rig.settings, [TopicSpec(old_tier, rig.settings.partitions)])
            await rig.producer.send_and_wait(old_tier, orjson.dumps(job), key=b"cases")
            await rig.restart()  # a notifier started with the new schedule
            await rig.wait_for(lambda: len(receiver.delivered()) == 1, what="the stranded retry")
            [entry] = await rig.log("cases")
    finally:
        await receiver.stop()
    assert (entry["outcome"], entry["attempt"]) == ("delivered", 3)
