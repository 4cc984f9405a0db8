"""The audit log: entries chained by one sequencer over the real broker, each kind of tampering
forged in a topic and named by `facestream audit verify`, de-duplication of entries written twice,
a second sequencer fencing the first, and `facestream audit search`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facestream import audit
from facestream.config import Settings
from facestream.io.kafka import TopicSpec, create_topics, delete_topics, producer, read_topic, running
from facestream.services.audit import log
from facestream.services.audit.chain import Chainer, digest, verify
from facestream.services.audit.sequencer import Sequencer, signing_key
from facestream.services.main import ensure_topics, main

KEY = Ed25519PrivateKey.generate()


def entries(n: int, case: str = "CASE-1") -> list[dict[str, Any]]:
    return [
        audit.entry(
            "search",
            f"officer-{i % 2}",
            "matcher",
            f"basis-{case}-{i}",
            details={"purpose": "locate a missing person", "candidates": i % 3, "threshold": 0.41},
            case_ref=case,
            image_id=f"img-{i}",
        )
        for i in range(n)
    ]


def chain_of(n: int, every: int = 4) -> list[dict[str, Any]]:
    chainer = Chainer(KEY)
    out = []
    for i, e in enumerate(entries(n)):
        out.append(chainer.record(e))
        if (i + 1) % every == 0:
            out.append(chainer.checkpoint())
    return out


def encoded(records: list[dict[str, Any]]) -> list[tuple[int, bytes | None]]:
    return [(i, orjson.dumps(r)) for i, r in enumerate(records)]


def rehash_from(records: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """The chain with every record from `start` on re-linked and re-hashed (a forger without the key)."""
    out = [dict(r) for r in records]
    for i in range(start, len(out)):
        if i:
            out[i]["prev_hash"] = out[i - 1]["hash"]
        out[i]["hash"] = digest(out[i])
    return out


def test_an_untouched_chain_verifies() -> None:
    records = chain_of(10)
    verdict = verify(encoded(records), KEY.public_key(), encoded([r for r in records if "signature" in r]))
    assert verdict.ok, verdict.problem
    assert (verdict.records, verdict.checkpoints, verdict.unsealed) == (10, 2, 2)
    assert verdict.head.seq == 12


def _modified(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records[3] = {**records[3], "entry": {**records[3]["entry"], "actor": "someone-else"}}
    return records


def _modified_rehashed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records = _modified(records)
    records[3]["hash"] = digest(records[3])
    return records


def _rewritten(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rehash_from(_modified(records), 3)


def _removed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return records[:6] + records[7:]


def _reordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records[6], records[7] = records[7], records[6]
    return records


def _truncated_start(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return records[3:]


def _forged_checkpoint(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # An attacker recomputes the chain and signs with a key of their own.
    forged = Chainer(Ed25519PrivateKey.generate())
    out = []
    for r in records:
        out.append(forged.record(r["entry"]) if r["event_type"] == "audit.record" else forged.checkpoint())
    return out


TAMPERING: dict[str, tuple[Callable[[list[dict[str, Any]]], list[dict[str, Any]]], str, int]] = {
    # name: (forgery, the kind verify reports, the seq it names)
    "modified": (_modified, "modified", 3),
    "modified, its hash recomputed": (_modified_rehashed, "modified", 3),
    "modified, the chain recomputed": (_rewritten, "rewritten", 4),
    "removed": (_removed, "removed", 7),
    "reordered": (_reordered, "reordered", 7),
    "truncated at the start": (_truncated_start, "truncated", 3),
    "checkpoint signed with another key": (_forged_checkpoint, "rewritten", 4),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_verify_names_each_kind_of_tampering(name: str) -> None:
    forge, kind, seq = TAMPERING[name]
    records = chain_of(10)
    verdict = verify(encoded(forge([dict(r) for r in records])), KEY.public_key())
    assert not verdict.ok
    assert verdict.problem is not None
    assert (verdict.problem.kind, verdict.problem.seq) == (kind, seq), str(verdict.problem)


def test_a_chain_cut_short_is_caught_by_its_witnessed_checkpoints() -> None:
    records = chain_of(10)
    witnesses = encoded([r for r in records if r["event_type"] == "audit.checkpoint"])
    cut = records[:5]  # ends before the second checkpoint (seq 9), which its witness holds
    assert verify(encoded(cut), KEY.public_key()).ok  # alone, a prefix looks whole
    verdict = verify(encoded(cut), KEY.public_key(), witnesses)
    assert verdict.problem is not None
    assert verdict.problem.kind == "truncated"
    assert verdict.problem.seq == 9


def test_entries_hold_references_only() -> None:
    with pytest.raises(TypeError, match="not an audit reference"):
        audit.entry("search", "a", "matcher", "b", embedding=[0.1])  # type: ignore[arg-type]
    with pytest.raises(Exception, match="details"):
        audit.entry("search", "a", "matcher", "b", details={"embedding": [0.1, 0.2]})
    same = [audit.entry("search", "a", "matcher", "event-1")["entry_id"] for _ in range(2)]
    assert same[0] == same[1]  # the same occurrence, the same id: chained once


# --- over the real broker ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def audited(tmp_path: Path, kafka: str, **overrides: Any) -> AsyncIterator[Settings]:
    prefix = f"a{uuid.uuid4().hex[:10]}"
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka,
        "topic_prefix": prefix,
        "app_id": prefix,
        "data_dir": tmp_path / "state",
        "audit_checkpoint_records": 5,
        "audit_checkpoint_s": 0.5,
        **overrides,
    }
    settings = Settings(**values)
    await ensure_topics(settings)
    try:
        yield settings
    finally:
        await delete_topics(settings)


async def chained(settings: Settings, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The chain's records once it holds `count` entries and nothing is left unsealed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        values = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("audit"), committed=True)]
        done = sum(v["event_type"] == "audit.record" for v in values)
        if done >= count and values[-1]["event_type"] == "audit.checkpoint":
            return values
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the chain holds {done} of {count} entries after {timeout_s} s")
        await asyncio.sleep(0.2)


async def copy_forged(settings: Settings, records: list[dict[str, Any]]) -> str:
    """A topic holding `records` (a forged copy of the chain): its short name."""
    name = f"forged-{uuid.uuid4().hex[:6]}"
    await create_topics(settings, [TopicSpec(settings.topic(name), 1)])
    async with running(producer(settings)) as prod:
        for r in records:
            await prod.send_and_wait(settings.topic(name), orjson.dumps(r), key=str(r["seq"]).encode(), partition=0)
    return name


def cli(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    config = settings.data_dir / "audit-test.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'kafka_bootstrap = "{settings.kafka_bootstrap}"\ntopic_prefix = "{settings.topic_prefix}"\n'
        f'app_id = "{settings.app_id}"\ndata_dir = "{settings.data_dir}"\n'
    )
    capsys.readouterr()
    code = main(["--config", str(config), *argv])
    return code, capsys.readouterr().out.strip().splitlines()


async def test_entries_are_chained_once_and_verified_and_each_forgery_is_named(
    tmp_path: Path, kafka: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with audited(tmp_path, kafka) as settings:
        sequencer = Sequencer(settings)
        await sequencer.start()
        try:
            written = entries(12)
            await audit.write(settings, *written[:7])
            await audit.write(settings, *written[5:])  # 5 and 6 again: at-least-once upstream
            values = await chained(settings, 12)
        finally:
            await sequencer.stop()
        chain_entries = [v["entry"]["entry_id"] for v in values if v["event_type"] == "audit.record"]
        assert chain_entries == [e["entry_id"] for e in written]  # each once, in the order written
        assert [v["seq"] for v in values] == list(range(len(values)))

        code, out = await asyncio.to_thread(cli, settings, capsys, "audit", "verify")
        summary = json.loads(out[-1])
        assert (code, summary["ok"], summary["entries"]) == (0, True, 12), summary

        for name, (forge, kind, _) in TAMPERING.items():
            if name == "checkpoint signed with another key":
                continue  # needs a second key: the pure test covers it
            topic = await copy_forged(settings, forge([dict(v) for v in values]))
            code, out = await asyncio.to_thread(cli, settings, capsys, "audit", "verify", "--topic", topic)
            summary = json.loads(out[-1])
            assert code == 1, name
            assert summary["kind"] == kind, (name, summary)
            assert summary["first_bad"].startswith("seq "), summary
        # Cut short: a copy without its last records; the witness topic still holds their checkpoint.
        topic = await copy_forged(settings, values[:6])
        code, out = await asyncio.to_thread(cli, settings, capsys, "audit", "verify", "--topic", topic)
        assert (code, json.loads(out[-1])["kind"]) == (1, "truncated")

        code, out = await asyncio.to_thread(
            cli, settings, capsys, "audit", "search", "--requester", "officer-1", "--case", "CASE-1"
        )
        found = [json.loads(line) for line in out]
        assert code == 0
        assert [f["refs"]["image_id"] for f in found] == [f"img-{i}" for i in range(1, 12, 2)]


async def test_entries_arriving_one_by_one_are_chained_a_few_transactions_at_a_time(tmp_path: Path, kafka: str) -> None:
    """Entries come one a search. Each transaction costs the broker about six requests and a
    commit marker, so the sequencer gathers what arrives within a fifth of a second into one. The
    markers are visible as gaps in the chain's offsets: one run of offsets per transaction."""
    async with audited(tmp_path, kafka, audit_checkpoint_records=1000, audit_checkpoint_s=1.0) as settings:
        sequencer = Sequencer(settings)
        await sequencer.start()
        try:
            written = entries(20, "CASE-T")
            async with running(producer(settings)) as prod:
                for e in written:  # 50 a second, each on its own, as stages write them
                    await audit.send(settings, prod, e)
                    await asyncio.sleep(0.02)
            values = await chained(settings, 20)
        finally:
            await sequencer.stop()
        assert [v["entry"]["entry_id"] for v in values if v["event_type"] == "audit.record"] == [
            e["entry_id"] for e in written
        ]
        offsets = [r.offset for r in await read_topic(settings, settings.topic("audit"), committed=True)]
        transactions = 1 + sum(b - a > 1 for a, b in itertools.pairwise(offsets))
        assert transactions <= 5, offsets  # one an entry (about 20) before the entries were gathered


async def test_a_second_sequencer_takes_over_the_chain_without_a_fork(tmp_path: Path, kafka: str) -> None:
    async with audited(tmp_path, kafka, session_timeout_s=6) as settings:
        first, second = Sequencer(settings), Sequencer(settings)
        await first.start()
        await second.start()
        try:
            batch = entries(20, case="CASE-2")
            await audit.write(settings, *batch[:10])
            await chained(settings, 10)
            holder, other = (first, second) if first.holding else (second, first)
            assert holder.holding
            assert not other.holding
            await holder.stop()  # the holder goes; the other takes the chain on from its head
            await audit.write(settings, *batch[10:])
            values = await chained(settings, 20, timeout_s=60)
            assert other.holding
        finally:
            await first.stop()
            await second.stop()
        assert [v["seq"] for v in values] == list(range(len(values)))
        verdict = await log.check(settings)
        assert verdict.ok, verdict.problem
        assert verdict.records == 20
        assert signing_key(settings, create=False).public_key()  # the key file the workers made


async def test_an_unreadable_entry_is_dead_lettered_and_the_chain_goes_on(tmp_path: Path, kafka: str) -> None:
    async with audited(tmp_path, kafka) as settings:
        sequencer = Sequencer(settings)
        await sequencer.start()
        try:
            async with running(producer(settings)) as prod:
                await prod.send_and_wait(settings.topic(audit.ENTRIES), b"{not an entry", partition=0)
            await audit.write(settings, *entries(2, case="CASE-3"))
            values = await chained(settings, 2)
        finally:
            await sequencer.stop()
        assert [v["entry"]["refs"]["case_ref"] for v in values if v["event_type"] == "audit.record"] == ["CASE-3"] * 2
        letters = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("dlq"), committed=True)]
        assert [(x["stage"], x["reason"]) for x in letters] == [("audit", "malformed_event")]


async def test_verify_while_the_chain_grows_finds_nothing_wrong(tmp_path: Path, kafka: str) -> None:
    """A checkpoint committed between verify's reads must not look like a chain cut short: the
    witnesses are read first (the race the devset run found)."""
    async with audited(tmp_path, kafka, audit_checkpoint_records=2) as settings:
        sequencer = Sequencer(settings)
        await sequencer.start()
        batches = [entries(24, case="CASE-4")[i : i + 2] for i in range(0, 24, 2)]

        async def grow() -> None:
            for batch in batches:
                await audit.write(settings, *batch)
                await asyncio.sleep(0.05)

        try:
            writing = asyncio.create_task(grow())
            verdicts = []
            while not writing.done():
                verdicts.append(await log.check(settings))
            await writing
        finally:
            await sequencer.stop()
        assert len(verdicts) >= 3
        assert [str(v.problem) for v in verdicts if not v.ok] == []
