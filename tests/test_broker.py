"""`facestream kafka up` starts the local broker where the settings say the clients connect: the
broker port from `kafka_bootstrap`, the controller port from `kafka_controller_port`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from facestream.config import Settings, load_settings
from facestream.errors import ConfigError
from facestream.io.broker import broker_env
from facestream.io.kafka import (
    METADATA_MAX_AGE_MS,
    TopicSpec,
    admin_client,
    consumer,
    create_topics,
    delete_topics,
    ensure_topics,
    partition_reader,
    producer,
    read_to_end,
    running,
)
from facestream.runtime.app import create_app
from facestream.runtime.service import own_topics
from facestream.services.main import SERVICES
from tests.conftest import ROOT
from tests.harness import free_port


def test_broker_ports_come_from_the_settings() -> None:
    env = broker_env(load_settings(kafka_bootstrap="127.0.0.1:19092", kafka_controller_port=19093, environment=False))
    assert env == {"FACESTREAM_KAFKA_PORT": "19092", "FACESTREAM_KAFKA_CONTROLLER_PORT": "19093"}
    with pytest.raises(ConfigError, match=r"listens on 127\.0\.0\.1:PORT only"):
        broker_env(load_settings(kafka_bootstrap="kafka.example:9092", environment=False))


async def test_kafka_up_on_other_ports(kafka: str, tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    prefix = f"b{uuid.uuid4().hex[:8]}"
    config = tmp_path / "facestream.toml"
    config.write_text(
        f'kafka_bootstrap = "127.0.0.1:{port}"\nkafka_controller_port = {controller}\ntopic_prefix = "{prefix}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env["FACESTREAM_KAFKA_STATE"] = str(tmp_path / "broker")  # its own log directory; the jars are shared

    def cli(action: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "facestream.services", "--config", str(config), "kafka", action]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)

    try:
        up = cli("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"up on 127.0.0.1:{port}" in up.stdout
        # The clients, configured from the same file, find the broker and the topics it created.
        admin = AIOKafkaAdminClient(bootstrap_servers=load_settings(config, environment=False).kafka_bootstrap)
        await admin.start()
        try:
            topics = await admin.list_topics()
        finally:
            await admin.close()
        assert f"{prefix}.images" in topics
        assert f"{prefix}.subscriptions" in topics  # the services' own topics too
        assert (tmp_path / "broker" / "server.properties").read_text().count(f"127.0.0.1:{controller}") == 2
    finally:
        down = await asyncio.to_thread(cli, "down")
        assert down.returncode == 0, down.stdout + down.stderr


async def test_partitions_unseen_at_a_rebalance_are_assigned_soon_after(kafka: str) -> None:
    """A rebalance assigns only the partitions the members' view of the topic holds: after a broker
    restart (leaders not yet elected) that can be none of a topic; after partitions are added,
    not the new ones. The group must take them up at the next metadata refresh, seconds later,
    not the clients' default five minutes. Shown here with partitions added to a topic the
    group already reads."""
    settings = load_settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", environment=False)
    topic = settings.topic("images")
    await create_topics(settings, [TopicSpec(topic, 1)])
    cons = consumer(settings, "images", group_id=f"{settings.topic_prefix}-late")
    await cons.start()
    try:
        while not cons.assignment():
            await cons.getmany(timeout_ms=200)
        assert {tp.partition for tp in cons.assignment()} == {0}
        async with running(admin_client(settings)) as admin:
            await admin.create_partitions({topic: NewPartitions(3)})
        deadline = asyncio.get_running_loop().time() + 3 * METADATA_MAX_AGE_MS / 1000
        while len(cons.assignment()) < 3 and asyncio.get_running_loop().time() < deadline:
            await cons.getmany(timeout_ms=500)
        assert {tp.partition for tp in cons.assignment()} == {0, 1, 2}
    finally:
        await cons.stop()
        await delete_topics(settings)


async def test_a_partition_reader_asks_the_broker_nothing_between_reads(kafka: str) -> None:
    """A started consumer fetches ahead for as long as it lives: a reader with a 20 ms fetch wait
    would send the broker 50 empty fetches a second, forever (the matcher keeps three). The reader
    fetches inside `read_to_end` only. Its fetches are counted at the client's `send`."""
    settings = load_settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", environment=False)
    tp = TopicPartition(settings.topic("gallery.keys"), 0)
    await create_topics(settings, [TopicSpec(tp.topic, 1)])
    try:
        async with running(producer(settings)) as prod:
            for i in range(3):
                await prod.send_and_wait(tp.topic, f"k{i}".encode(), key=b"k")
        reader = await partition_reader(settings, tp)
        fetches = []
        send = reader._client.send

        async def counted(node_id: int, request: object, **kwargs: object) -> object:
            if type(request).__name__.startswith("FetchRequest"):
                fetches.append(request)
            return await send(node_id, request, **kwargs)

        reader._client.send = counted  # type: ignore[method-assign]
        try:
            await asyncio.sleep(1.0)
            assert fetches == []  # started, assigned, not yet reading
            got: list[bytes] = []
            await read_to_end(reader, tp, lambda record: got.append(record.value))
            assert got == [b"k0", b"k1", b"k2"]
            after_read = len(fetches)
            assert after_read >= 1
            await asyncio.sleep(1.0)
            assert len(fetches) == after_read  # paused again: nothing between reads
            async with running(producer(settings)) as prod:
                await prod.send_and_wait(tp.topic, b"k3", key=b"k")
            await read_to_end(reader, tp, lambda record: got.append(record.value))
            assert got[-1] == b"k3"  # the position was kept across the pause
        finally:
            await reader.stop()
    finally:
        await delete_topics(settings)


def test_the_faust_app_refreshes_metadata_as_often() -> None:
    settings = load_settings(ops_port=-1, environment=False)
    with ThreadPoolExecutor(1) as executor:
        app = create_app(settings, SERVICES, SERVICES, executor)
    assert app.conf.consumer_metadata_max_age_ms == METADATA_MAX_AGE_MS


async def test_transit_topics_keep_biometric_data_for_hours(kafka: str) -> None:
    """Images, faces and embeddings (photos, face pixels, embeddings) are kept
    `transit_retention_hours`; matches and dead letters (ids, scores, reasons) longer. Retention
    deletes whole segments, so each segment rolls at a tenth of the retention (the broker's default
    is 7 days, which would keep two-hour photos for a week on a quiet topic)."""
    settings = load_settings(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}", transit_retention_hours=2, webhook_event_ttl_s=3600, environment=False
    )
    await ensure_topics(settings)
    try:
        names = [settings.topic(n) for n in ("images", "faces", "embeddings", "matches", "dlq", "crops")]
        configs = await topic_configs(settings, names)
        hours = {name.rsplit(".", 1)[1]: int(c["retention.ms"]) / 3_600_000 for name, c in configs.items()}
        assert hours == {"images": 2, "faces": 2, "embeddings": 2, "matches": 720, "dlq": 720, "crops": 1}
        rolls = {name.rsplit(".", 1)[1]: int(c["segment.ms"]) / 3_600_000 for name, c in configs.items()}
        assert rolls == {"images": 0.2, "faces": 0.2, "embeddings": 0.2, "matches": 72, "dlq": 72, "crops": 0.1}
    finally:
        await delete_topics(settings)


async def test_compacted_topics_drop_a_replaced_record_within_the_hour(kafka: str) -> None:
    """The gallery and its data keys are compacted: an erased subject's wrapped data key goes when
    compaction runs, which never touches the segment being written (7 days by default). The
    maximum compaction lag makes the broker roll and clean it within the hour."""
    settings = load_settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", environment=False)
    specs = own_topics(settings, SERVICES)
    await create_topics(settings, specs)
    try:
        compacted = [s.name for s in specs if s.compact]
        assert settings.topic("gallery.keys") in compacted
        configs = await topic_configs(settings, compacted)
        assert {c["max.compaction.lag.ms"] for c in configs.values()} == {str(3_600_000)}
        assert {c["cleanup.policy"] for c in configs.values()} == {"compact"}
    finally:
        await delete_topics(settings)


async def topic_configs(settings: Settings, names: list[str]) -> dict[str, dict[str, str]]:
    async with running(admin_client(settings)) as admin:
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    found: dict[str, dict[str, str]] = {}
    for response in described:
        for _, _, _, name, entries in response.resources:
            found[name] = {e[0]: e[1] for e in entries}
    return found


def test_a_broker_this_checkout_did_not_start_is_used_and_left_running(kafka: str, tmp_path: Path) -> None:
    """Another checkout's broker on the ports (here: the suite's, seen from a state folder that
    never started one) is reported running, used by `up`, and not stopped by `down`."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"
    env = {**os.environ, "FACESTREAM_KAFKA_STATE": str(tmp_path / "elsewhere")}

    def call(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), action], env=env, capture_output=True, text=True, timeout=60)

    status = call("status")
    assert (status.returncode, "not started from this checkout" in status.stdout) == (0, True), status
    up = call("up")
    assert up.returncode == 0
    assert "using it" in up.stdout
    assert "FACESTREAM_KAFKA_CONTROLLER_PORT" in up.stdout  # how to run one of your own instead
    down = call("down")
    assert "left running" in down.stdout
    assert subprocess.call(["bash", str(script), "status"], stdout=subprocess.DEVNULL) == 0  # still up


async def test_a_cluster_refusal_is_a_clear_error_not_a_timeout(kafka: str, capsys: pytest.CaptureFixture[str]) -> None:
    """More replicas than brokers: the broker's refusal is named with the setting behind it (it
    used to end in a metadata time-out half a minute later). ACLs on brokers without an
    authorizer: the refusal, not a traceback."""
    from facestream.services.main import main

    prefix = f"rf{uuid.uuid4().hex[:8]}"
    settings = load_settings(environment=False, topic_prefix=prefix, kafka_replication_factor=3)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"refused to create .*only 1 broker.*kafka_replication_factor 3"):
        await ensure_topics(settings)
    assert time.monotonic() - started < 15
    code = await asyncio.to_thread(
        main, ["kafka", "acls", "--service", "detector", "--principal", "User:detector", "--apply"]
    )
    assert code == 2
    assert "refused the ACL" in capsys.readouterr().err
