"""The delivery engine's bookkeeping under faults: an outcome that cannot be recorded is worked
on again instead of holding its partition's commits forever, and a record that fails to be taken
in is read again instead of being skipped (and later committed past). Real broker and receivers;
the one failure each test needs is injected at the engine's boundary to the broker (a method
replaced for one call), since a real broker cannot be made to fail exactly one write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from facestream.io.kafka import read_topic
from tests.delivery_rig import Subscriber, match, notifier


async def test_an_outcome_not_recorded_is_worked_on_again(
    tmp_path: Path, kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("cases", receiver)
            engine = rig.stage.engine
            assert engine is not None
            original, failures = engine._log, [1]

            async def flaky_log(job: dict[str, Any], outcome: str, *args: Any, **kwargs: Any) -> None:
                if outcome == "delivered" and failures:
                    failures.pop()
                    raise ConnectionError("broker away while logging the outcome")
                await original(job, outcome, *args, **kwargs)

            monkeypatch.setattr(engine, "_log", flaky_log)
            await rig.publish(match(1))

            async def logged() -> bool:
                return any(e["outcome"] == "delivered" for e in await rig.log("cases"))

            await rig.wait_for(logged, limit_s=20, what="the outcome, recorded on the second try")
            await rig.wait_for(lambda: not any(engine.offsets.open.values()), what="the job to be finished")
            assert len(receiver.delivered()) == 1  # one webhook id, whatever the receiver saw twice
            assert engine.offsets.committable()  # the partition's commits move on
    finally:
        await receiver.stop()


async def test_a_record_that_fails_to_be_taken_in_is_read_again(
    tmp_path: Path, kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("cases", receiver)
            engine = rig.stage.engine
            assert engine is not None
            original, failures = engine._bad_record, [1]

            async def flaky_bad_record(*args: Any) -> None:
                if failures:
                    failures.pop()
                    raise ConnectionError("broker away while dead-lettering")
                await original(*args)

            monkeypatch.setattr(engine, "_bad_record", flaky_bad_record)
            deliveries = rig.settings.topic("deliveries")
            await rig.publish(match(1))
            await rig.producer.send_and_wait(deliveries, b"{not a job", key=b"cases")  # same partition
            await rig.publish(match(2))
            await rig.wait_for(lambda: len(receiver.delivered()) == 2, what="both jobs around the bad record")

            async def dead_lettered() -> bool:
                return len(await read_topic(rig.settings, rig.settings.topic("dlq"))) == 1

            await rig.wait_for(dead_lettered, what="the bad record, dead-lettered on the second try")
            [letter] = [orjson.loads(r.value) for r in await read_topic(rig.settings, rig.settings.topic("dlq"))]
            assert letter["reason"] == "malformed_event"
            await rig.wait_for(lambda: not any(engine.offsets.open.values()), what="every job finished")
    finally:
        await receiver.stop()


async def test_a_job_already_delivered_is_not_sent_again(tmp_path: Path, kafka: str) -> None:
    """Work redone after a crash (or a match fanned out again) arrives as a second job with the
    same webhook id; a notifier started afterwards knows from the delivery log that it was
    delivered, and does not send it again."""
    receiver = await Subscriber().start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("cases", receiver)
            first = match(1)
            await rig.publish(first)
            await rig.wait_for(lambda: len(receiver.arrivals) == 1, what="the delivery")

            async def logged() -> bool:
                return any(e["outcome"] == "delivered" for e in await rig.log("cases"))

            await rig.wait_for(logged, what="the delivery log entry")
            await rig.restart()  # a new engine: nothing in memory
            await rig.publish(first)  # the same match again: the same webhook id

            async def dropped() -> bool:
                return any(e.get("reason") == "already_delivered" for e in await rig.log("cases"))

            await rig.wait_for(dropped, what="the second job dropped")
            assert len(receiver.arrivals) == 1
    finally:
        await receiver.stop()
