"""Kafka secured on the wire: a real broker with only a SASL_SSL listener (SCRAM-SHA-512; a CA
and a broker certificate made here) and the StandardAuthorizer, nothing allowed without an ACL.
An administrator makes the topics and each principal's ACLs (`facestream kafka topics|acls`); the
pipeline runs through it as a principal that is not a super user; the detector's principal may do
its own work and nothing else: it cannot read matches nor write them. An erasure runs through the
matcher's and the notifier's principals too."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from pydantic import SecretStr

from devtools.kafka_nodes import KafkaNodes, Secured, make_certificates
from facestream.cli import principal_acls
from facestream.config import Settings, load_settings
from facestream.io.acls import create_acls
from facestream.io.kafka import consumer, producer, running
from facestream.services.main import SERVICES, ensure_topics
from tests.conftest import SAMPLES
from tests.faults.run import GALLERY, NOT_ENROLLED, PROBES, _search
from tests.harness import Pipeline
from tests.helpers import enrolment

# One worker per service, each its own principal (the API's worker runs the audit sequencer too).
WORKERS = [["detector"], ["embedder"], ["matcher"], ["notifier"], ["api", "audit"]]
USERS = {group[0]: f"{group[0]}-secret-1" for group in WORKERS}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaNodes, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("secured")
    keystore, ca = make_certificates(folder / "tls")
    broker = KafkaNodes(folder / "kafka", 1, Secured(keystore, ca, "admin", "admin-secret-1", USERS))
    broker.start()
    client = {"kafka_bootstrap": broker.bootstrap, "kafka_security_protocol": "SASL_SSL", "kafka_ssl_cafile": ca}
    try:
        yield broker, client
    finally:
        broker.stop()


def as_user(base: Settings, client: dict[str, Any], user: str, password: str) -> Settings:
    return base.model_copy(update={**client, "kafka_username": user, "kafka_password": SecretStr(password)})


async def test_the_pipeline_runs_over_sasl_ssl_each_service_as_its_own_principal(
    secured: tuple[KafkaNodes, dict[str, Any]], tmp_path: Path
) -> None:
    """Every worker authenticates as its service's principal and has only that service's ACLs;
    the test itself submits and reads as the administrator."""
    _, client = secured
    admin = {**client, "kafka_username": "admin", "kafka_password": "admin-secret-1"}
    env = {
        slot: {"FACESTREAM_KAFKA_USERNAME": group[0], "FACESTREAM_KAFKA_PASSWORD": USERS[group[0]]}
        for slot, group in enumerate(WORKERS)
    }
    pipeline = Pipeline(tmp_path, [SAMPLES], services=WORKERS, extra=admin, prepare=_acls, slot_env=env)
    try:
        await pipeline.start()
        for i, path in enumerate(GALLERY):
            await pipeline.submit(f"enrol-{i}", enrolment(f"enrol-{i}", path, pipeline.settings, "secure"))
        ids = {f"probe-{i}": path for i, path in enumerate(PROBES)}

        async def enrolled() -> bool:
            return sum(m["status"] == "enrolled" for m in await pipeline.events("matches")) >= len(GALLERY)

        await pipeline.wait_for(enrolled, limit_s=240, what="the gallery, over SASL_SSL")
        for image_id, path in ids.items():
            await pipeline.submit(image_id, _search(image_id, path, pipeline.settings))
        expected = [i for i, p in ids.items() if p.parent.name != NOT_ENROLLED]

        async def answered() -> bool:
            done = {m["image_id"] for m in await pipeline.events("matches")}
            return set(ids) <= done and len(pipeline.receiver.deliveries) >= len(expected)

        await pipeline.wait_for(answered, limit_s=240, what="every search answered and delivered, over SASL_SSL")
        results = {m["image_id"]: m for m in await pipeline.events("matches") if m["image_id"] in ids}
        for image_id in expected:
            assert results[image_id]["candidates"][0]["subject_id"] == ids[image_id].parent.name

        # An erasure (requested by the administrator) runs through the matcher's eraser and the
        # notifier's erasure notices under their own principals: a receipt, then the signed notice.
        target = GALLERY[0].parent.name
        command = [sys.executable, "-m", "facestream.services", "--config", str(pipeline.config), "gallery", "erase"]
        erased = await asyncio.to_thread(
            subprocess.run,
            [*command, target, "--reason", "consent withdrawn", "--requested-by", "dpo@example"],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")},
        )
        assert erased.returncode == 0, erased.stderr
        assert "signature: valid" in erased.stdout

        def notices() -> bool:
            return any(d.event["type"] == "face.subject.erased" for d in pipeline.receiver.deliveries)

        await pipeline.wait_for(notices, limit_s=120, what="the erasure notice, over SASL_SSL")
        assert pipeline.receiver.rejected == 0
        logs = pipeline.logs(None)
        assert "not authorized" not in logs
        assert "AuthorizationFailed" not in logs
    finally:
        await pipeline.stop()


async def _acls(pipeline: Pipeline) -> None:
    """Each worker's principal's ACLs, made by the administrator before the workers start, as
    `facestream kafka acls --service … --principal … --apply` makes them."""
    for group in WORKERS:
        chosen = [s for s in SERVICES if s.name in group]
        await create_acls(pipeline.settings, f"User:{group[0]}", principal_acls(pipeline.settings, chosen, SERVICES))


async def test_the_detector_principal_cannot_read_or_write_matches(
    secured: tuple[KafkaNodes, dict[str, Any]], tmp_path: Path
) -> None:
    _, client = secured
    base = load_settings(environment=False, topic_prefix="acl", app_id="acl", data_dir=tmp_path)
    admin = as_user(base, client, "admin", "admin-secret-1")
    detector = as_user(base, client, "detector", USERS["detector"])
    await ensure_topics(admin)
    [service] = [s for s in SERVICES if s.name == "detector"]
    rules = principal_acls(admin, [service], SERVICES)
    assert {(r.resource, r.name, r.operation) for r in rules} >= {
        ("group", "acl-detector", "read"),
        ("topic", "acl.images", "read"),
        ("topic", "acl.faces", "write"),
    }
    await create_acls(admin, "User:detector", rules)

    # Its own work: images read in its group, faces written.
    async with running(producer(admin)) as prod:
        await prod.send_and_wait(admin.topic("images"), b"{}", key=b"k")
        await prod.send_and_wait(admin.topic("matches"), b"{}", key=b"k")
    async with running(consumer(detector, "images", group_id="acl-detector")) as cons:
        got = await cons.getmany(timeout_ms=10_000)
        assert sum(len(v) for v in got.values()) == 1
    async with running(producer(detector)) as prod:
        await prod.send_and_wait(detector.topic("faces"), b"{}", key=b"k")

    # Not its work: matches neither read nor written (the broker refuses even their metadata).
    with pytest.raises(TopicAuthorizationFailedError):
        async with running(consumer(detector, "matches", group_id="acl-detector")):
            pass
    async with running(producer(detector)) as prod:
        with pytest.raises(TopicAuthorizationFailedError):
            await prod.send_and_wait(detector.topic("matches"), b"{}", key=b"k")
