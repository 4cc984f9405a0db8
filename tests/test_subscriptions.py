"""Subscriptions in the compacted Kafka topic: durable, shared between processes, secrets
encrypted at rest; and the `facestream subscriptions` / `facestream deliveries` commands."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from facestream.config import Settings, SubscriptionSeed, to_toml
from facestream.errors import ConfigError
from facestream.io.kafka import read_topic
from facestream.services.main import main
from facestream.services.notifier.subscriptions import KeyMismatch, Subscription, SubscriptionStore, encode, new_secret
from tests.delivery_rig import Subscriber, match, notifier


async def started(settings: Settings) -> SubscriptionStore:
    store = SubscriptionStore(settings)
    await store.start()
    return store


async def test_the_store_is_durable_shared_and_encrypted(tmp_path: Path, kafka: str) -> None:
    async with notifier(tmp_path, kafka) as rig:
        settings, secret = rig.settings, new_secret()
        one = await started(settings)
        await one.add(Subscription.new("cases", "https://cases.example/hook", secret, watchlists=("missing",)))
        two = await started(settings)  # a second worker, started later, reads it from the topic
        try:
            got = two.get("cases")
            assert got is not None
            assert got.signing_secrets(time.time()) == [secret]
            assert got.watchlists == ("missing",)
            await two.disable("cases", "maintenance")
            await rig.wait_for(lambda: one.get("cases").state == "disabled", what="the change to reach the other")  # type: ignore[union-attr]
            raw = b"".join(r.value or b"" for r in await read_topic(settings, settings.topic("subscriptions")))
            assert secret.encode() not in raw
            assert secret.removeprefix("whsec_").encode() not in raw
            # A process with another key refuses to start, naming the mismatch (it would otherwise
            # skip every subscription and drop their deliveries).
            other = settings.model_copy(update={"subscriptions_key": SecretStr(Fernet.generate_key().decode())})
            with pytest.raises(KeyMismatch, match=r"1 subscription\(s\) .* \(cases\) were written with another"):
                await started(other)
            await two.remove("cases")
            await rig.wait_for(lambda: one.get("cases") is None, what="the removal to reach the other")
        finally:
            await one.stop()
            await two.stop()
        three = await started(settings)
        assert three.get("cases") is None
        await three.stop()


async def test_registration_refuses_what_can_never_be_delivered(tmp_path: Path, kafka: str) -> None:
    async with notifier(tmp_path, kafka) as rig:
        for bad in (
            Subscription.new("has space", "https://x.example/h", new_secret(), all_watchlists=True),
            Subscription.new("ftp", "ftp://x.example/h", new_secret(), all_watchlists=True),
            Subscription.new("creds", "https://user:pw@x.example/h", new_secret(), all_watchlists=True),
            Subscription.new(
                "types", "https://x.example/h", new_secret(), all_watchlists=True, event_types=("face.everything",)
            ),
            Subscription.new("unbound", "https://x.example/h", new_secret()),  # receives which watchlists?
            Subscription("nosecret", "https://x.example/h"),
        ):
            with pytest.raises(ConfigError):
                await rig.store.add(bad)
        await rig.store.add(Subscription.new("ok", "https://x.example/h", new_secret(), all_watchlists=True))
        with pytest.raises(ConfigError, match="exists"):
            await rig.store.add(Subscription.new("ok", "https://x.example/h", new_secret(), all_watchlists=True))


async def test_configured_subscriptions_are_seeded_once(tmp_path: Path, kafka: str) -> None:
    """A subscription in the settings file is added when missing; later changes made through the
    store (here: disabled) survive a restart that seeds again."""
    configured = SubscriptionSeed(
        name="seeded", url="https://x.example/h", secret=SecretStr(new_secret()), all_watchlists=True
    )
    async with notifier(tmp_path, kafka, subscriptions=(configured,)) as rig:
        assert rig.store.get("seeded") is not None
        await rig.store.disable("seeded", "paused by an operator")
        await rig.restart()
        sub = rig.store.get("seeded")
        assert sub is not None
        assert sub.state == "disabled"


async def test_rotation_keeps_old_secrets_for_the_grace_period(tmp_path: Path, kafka: str) -> None:
    async with notifier(tmp_path, kafka) as rig:
        old = new_secret()
        await rig.store.add(Subscription.new("r", "https://x.example/h", old, all_watchlists=True))
        sub, new = await rig.store.rotate_secret("r", grace_s=0.5)
        assert sub.signing_secrets(time.time()) == [old, new]
        assert sub.signing_secrets(time.time() + 1) == [new]
        sub, newest = await rig.store.rotate_secret("r", grace_s=0)
        assert sub.signing_secrets(time.time()) == [newest]


async def test_cli_manages_subscriptions_and_replays_dead_letters(
    tmp_path: Path, kafka: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands an operator runs, against a running notifier: add (secret shown once), list,
    disable/enable, rotate-secret, deliveries list, deliveries replay, remove."""
    receiver = await Subscriber([400]).start()
    try:
        async with notifier(tmp_path, kafka) as rig:
            config = tmp_path / "facestream.toml"
            keys = ("kafka_bootstrap", "topic_prefix", "app_id", "data_dir", "webhook_allow_private")
            values = {k: getattr(rig.settings, k) for k in keys}
            config.write_text(to_toml(values))

            async def cli(*args: str, rc: int = 0) -> str:
                capsys.readouterr()
                assert await asyncio.to_thread(main, ["--config", str(config), *args]) == rc
                return capsys.readouterr().out

            added = await cli(
                "subscriptions", "add", "cases", "--url", receiver.url, "--all-watchlists", "--min-score", "0.5"
            )
            receiver.secrets = [added.split("shown once; give it to the receiver): ")[1].strip()]
            await rig.wait_for(lambda: rig.store.get("cases") is not None, what="the notifier to see it")
            assert "cases" in await cli("subscriptions", "list")
            assert "disabled: audit" in await cli("subscriptions", "disable", "cases", "--reason", "audit")
            refused = await cli("deliveries", "replay", "--subscription", "cases", rc=2)
            assert "is disabled (audit); enable it first" in refused
            assert "active" in await cli("subscriptions", "enable", "cases")
            rotated = await cli("subscriptions", "rotate-secret", "cases", "--grace", "600")
            receiver.secrets.append(rotated.split("(shown once): ")[1].strip())
            await rig.wait_for(lambda: len(rig.store.get("cases").secrets) == 2, what="the rotation")  # type: ignore[union-attr]

            await rig.publish(match(1, score=0.7), match(2, score=0.3))  # the second is below min-score
            await rig.wait_for(lambda: rig.dead("cases"), what="the rejected delivery")
            listed = await cli("deliveries", "list", "--subscription", "cases")
            assert "dead_lettered" in listed
            assert "400" in listed
            replayed = await cli("deliveries", "replay", "--subscription", "cases")
            assert "1 replayed to cases" in replayed
            await rig.wait_for(lambda: len(receiver.delivered()) == 1, what="the replayed delivery")
            assert "delivered" in await cli("deliveries", "list", "--outcome", "delivered")
            assert "removed cases" in await cli("subscriptions", "remove", "cases")
    finally:
        await receiver.stop()
    assert receiver.unverified == 0  # both secrets verify every request
    [(webhook_id, [payload])] = receiver.delivered().items()
    assert payload["candidates"][0]["score"] == 0.7
    assert all(a.webhook_id == webhook_id for a in receiver.arrivals)
    assert orjson.loads(receiver.arrivals[0].body) == payload


async def test_unknown_fields_do_not_make_a_subscription_unreadable(tmp_path: Path, kafka: str) -> None:
    """A record written by a newer version (an extra field) still applies, so a disable it carries
    takes effect; a record that cannot be read at all leaves the last readable state, and the
    store keeps following."""
    async with notifier(tmp_path, kafka) as rig:
        await rig.store.add(Subscription.new("cases", "https://cases.example/h", new_secret(), all_watchlists=True))
        sub = rig.store.require("cases")
        record = orjson.loads(encode(replace(sub, state="disabled", disabled_reason="newer writer"), rig.store.box))
        record["priority"] = "high"  # a field this version does not know
        topic = rig.settings.topic("subscriptions")
        await rig.store.producer.send_and_wait(topic, orjson.dumps(record), key=b"cases")
        await rig.wait_for(lambda: rig.store.require("cases").state == "disabled", what="the newer record")
        await rig.store.producer.send_and_wait(topic, b"{not json", key=b"cases")
        await rig.store.producer.send_and_wait(topic, None, key=b"other")  # the follow task is still alive:
        await rig.store.add(Subscription.new("later", "https://later.example/h", new_secret(), all_watchlists=True))
        reader = await started(rig.settings)
        try:
            assert reader.require("later").active
            assert reader.require("cases").state == "disabled"
        finally:
            await reader.stop()


def test_the_command_line_never_makes_a_key_of_its_own(tmp_path: Path) -> None:
    """Run from a directory without the notifiers' key file and with no key configured, the
    command line refuses, naming where it looked, instead of creating a key that can read nothing."""
    settings = Settings(data_dir=tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="no subscriptions key") as caught:
        SubscriptionStore(settings, create_key=False)
    assert str(tmp_path / "elsewhere" / "subscriptions.key") in str(caught.value)
    assert not (tmp_path / "elsewhere").exists()
