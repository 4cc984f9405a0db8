"""With the Qdrant server backend the collection is one index shared by every matcher, fed from the
gallery topic by one indexer group that commits its offsets in Kafka: one replica applies, and a
replica of the same group counts as caught up once the group's committed offset reaches the end.
Real broker and a real Qdrant server (the `qdrant_server` fixture). A member that starts after an erasure reads it
from the topic: an enrolment submitted before the erasure request and arriving later is dropped."""

from __future__ import annotations

import uuid

from cryptography.fernet import Fernet
from pydantic import SecretStr
from qdrant_client import AsyncQdrantClient

from facestream import contracts
from facestream.config import Settings
from facestream.contracts import ids
from facestream.io.kafka import create_topics, delete_topics, producer, running
from facestream.services.matcher.keys import KeyRing, gallery_keys
from facestream.services.matcher.replica import Replica
from facestream.services.matcher.server import QdrantGallery
from facestream.services.matcher.service import SERVICE
from tests.helpers import RETAIN


class SharedGallery(QdrantGallery):
    """The one collection every member uses: a member that stops leaves it open for the others
    (as a server would be)."""

    async def close(self) -> None:
        return None


def point(subject: str, key_id: str, ring: KeyRing) -> dict[str, object]:
    vector = [1.0] + [0.0] * 127
    record = {
        "schema_version": 1,
        "event_type": "gallery.point",
        "point_id": ids.point_id(subject, f"img-{subject}", 0),
        "subject_id": subject,
        "watchlist": "w",
        "image_id": f"img-{subject}",
        "image_sha256": "5" * 64,
        "face_index": 0,
        "model": {"name": "sface", "version": "2021dec"},
        "consent": {
            "lawful_basis": "explicit_consent",
            "consent_ref": "c/1",
            "retain_until": RETAIN,
            "source_attestation": "given in person",
            "enrolled_by": "clerk",
        },
        "source": "test",
        "embedding_enc": {"key_id": key_id, "token": ring.encrypt(key_id, vector)},
        "enrolled_at": "2026-12-01T00:00:00.000Z",
    }
    contracts.validate("gallery.point", record)
    return record


async def test_one_indexer_group_feeds_the_shared_collection(kafka: str, qdrant_server: str) -> None:
    prefix = f"g{uuid.uuid4().hex[:8]}"
    settings = Settings(
        topic_prefix=prefix,
        app_id=prefix,
        gallery_backend="qdrant",
        qdrant_url=qdrant_server,
        gallery_keys=SecretStr(Fernet.generate_key().decode()),
    )
    await create_topics(settings, SERVICE.topics(settings))
    ring = KeyRing(gallery_keys(settings).wrapper)
    shared = AsyncQdrantClient(url=qdrant_server)
    first = Replica(settings, SharedGallery(shared, 128, prefix), None, KeyRing(ring.wrapper))
    try:
        async with running(producer(settings)) as prod:
            for subject in ("alice", "bob", "carol"):
                key_id, key_record = ring.key_for(subject)
                assert key_record is not None
                await prod.send_and_wait(
                    settings.topic("gallery.keys"), contracts.dumps(key_record), key=f"{subject}/{key_id}".encode()
                )
                record = point(subject, key_id, ring)
                await prod.send_and_wait(
                    settings.topic("gallery"), contracts.dumps(record), key=str(record["point_id"]).encode()
                )
        await first.start()
        assert first.caught_up
        assert await first.gallery.count() == 3
        assert first.group == f"{prefix}-gallery-indexer"
        # A second member of the group: it has nothing to apply, the group has; it is caught up.
        second = Replica(settings, SharedGallery(shared, 128, prefix), None, KeyRing(ring.wrapper))
        await second.start()
        assert second.caught_up
        assert await second.gallery.count() == 3
        await second.stop()

        # Alice is erased (her key destroyed, the erasure written); an enrolment of her submitted
        # before the request arrives after it, under a new key (as a matcher would write it).
        erased_at = "2026-12-01T12:00:00.000Z"
        async with running(producer(settings)) as prod:
            [old_key] = ring.key_ids("alice")
            await prod.send_and_wait(settings.topic("gallery.keys"), None, key=f"alice/{old_key}".encode())
            erasure = {
                "schema_version": 1,
                "event_type": "gallery.erasure",
                "request_id": "r1",
                "subject_id": "alice",
                "reason": "consent withdrawn",
                "requested_by": "dpo",
                "requested_at": erased_at,
            }
            await prod.send_and_wait(settings.topic("gallery"), contracts.dumps(erasure), key=b"erasure/alice")
        await first.sync()
        assert await first.gallery.count() == 2
        await first.stop()
        async with running(producer(settings)) as prod:
            ring.apply(f"alice/{old_key}", None)
            key_id, key_record = ring.key_for("alice")
            assert key_record is not None
            await prod.send_and_wait(
                settings.topic("gallery.keys"), contracts.dumps(key_record), key=f"alice/{key_id}".encode()
            )
            late = {**point("alice", key_id, ring), "submitted_at": "2026-12-01T11:59:00.000Z"}
            late["point_id"] = ids.point_id("alice", "img-late", 0)
            await prod.send_and_wait(
                settings.topic("gallery"), contracts.dumps(late), key=str(late["point_id"]).encode()
            )
        # A member started now, with no state of its own, knows of the erasure from the topic: the
        # late enrolment does not survive it.
        third = Replica(settings, SharedGallery(shared, 128, prefix), None, KeyRing(ring.wrapper))
        await third.start()
        assert third.erased == {"alice": erased_at}
        assert await third.gallery.point_ids("alice") == []
        assert await third.gallery.count() == 2
        await third.stop()
    finally:
        await first.stop()
        await shared.close()
        await delete_topics(settings)
