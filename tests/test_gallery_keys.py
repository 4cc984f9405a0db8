"""Per-subject data keys (services/matcher/keys.py) and receipt signatures, without a broker: a
tombstone destroys a key for good, the gallery key can be rotated, a wrong gallery key is noticed,
and a receipt changed after signing does not verify."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.services.matcher.eraser import sign, verify
from facestream.services.matcher.keys import KeyRing, gallery_keys

VECTOR = [0.25, -0.5] + [0.0] * 126


def test_a_destroyed_key_leaves_its_records_unreadable() -> None:
    keys = gallery_keys(Settings(gallery_keys=SecretStr(Fernet.generate_key().decode())))
    ring = KeyRing(keys.wrapper)
    key_id, record = ring.key_for("alice")
    assert record is not None
    # One key per subject while it lives; its record goes out with every point until the keys
    # topic gives it back (a write that failed loses no key a point depends on).
    assert ring.key_for("alice") == (key_id, record)
    ring.apply(f"alice/{key_id}", orjson.dumps(record))
    assert ring.key_for("alice") == (key_id, None)
    token = ring.encrypt(key_id, VECTOR)
    assert ring.decrypt(key_id, token) == VECTOR
    # Another process learns the key from the topic's record, and loses it with the tombstone.
    reader = KeyRing(keys.wrapper)
    reader.apply(f"alice/{key_id}", orjson.dumps(record))
    assert reader.decrypt(key_id, token) == VECTOR
    reader.apply(f"alice/{key_id}", None)
    assert reader.decrypt(key_id, token) is None
    assert reader.key_ids("alice") == set()
    assert reader.key_for("alice")[0] != key_id  # a new enrolment gets a new key


def test_the_gallery_key_rotates_and_a_wrong_one_is_noticed() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = KeyRing(gallery_keys(Settings(gallery_keys=SecretStr(old))).wrapper)
    key_id, record = before.key_for("bob")
    token = before.encrypt(key_id, VECTOR)
    rotated = KeyRing(gallery_keys(Settings(gallery_keys=SecretStr(f"{new},{old}"))).wrapper)
    rotated.apply(f"bob/{key_id}", orjson.dumps(record))
    assert rotated.decrypt(key_id, token) == VECTOR  # records wrapped with the old key still unwrap
    wrong = KeyRing(gallery_keys(Settings(gallery_keys=SecretStr(new))).wrapper)
    wrong.apply(f"bob/{key_id}", orjson.dumps(record))
    assert wrong.unreadable == 1
    assert wrong.decrypt(key_id, token) is None
    with pytest.raises(ValueError, match="Fernet key"):
        Settings(gallery_keys=SecretStr("not-a-key"))


def test_the_command_line_never_makes_a_gallery_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no gallery keys"):
        gallery_keys(Settings(data_dir=tmp_path / "elsewhere"), create=False)


def test_a_changed_receipt_does_not_verify() -> None:
    keys = gallery_keys(Settings(gallery_keys=SecretStr(Fernet.generate_key().decode())))
    receipt = sign({"subject_id": "alice", "points_removed": 2, "reason": "consent withdrawn"}, keys)
    assert verify(receipt, keys)
    assert not verify({**receipt, "points_removed": 1}, keys)
    other = gallery_keys(Settings(gallery_keys=SecretStr(Fernet.generate_key().decode())))
    assert not verify(receipt, other)
