"""Crypto-shredding: every subject's embeddings are encrypted in the gallery topic with a data key
of that subject's own, and erasure destroys the key first.

Data keys live in the compacted topic `gallery.keys` (key = `subject/key_id`), wrapped by the
gallery key (`gallery_keys`: the first wraps, every one unwraps, so the key can be rotated). An
erasure writes a tombstone for each of the subject's data keys before anything else: from then on
no copy of the subject's gallery records (uncompacted segments, replicas, backups of the topic)
can be decrypted, whether compaction has run yet or not. A subject may hold more than one data
key (two matchers enrolling the same new subject at once each make one); all are destroyed.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.keys import configured_key


@dataclass(frozen=True)
class GalleryKeys:
    """The gallery key(s): `wrapper` wraps and unwraps data keys; `signers` sign erasure receipts
    (HMAC keys derived from the same configured keys: the first signs, every one verifies)."""

    wrapper: MultiFernet
    signers: tuple[bytes, ...]

    @property
    def signer_id(self) -> str:
        """A non-secret name of the signing key (a hash of it), printed in receipts."""
        return hashlib.sha256(self.signers[0]).hexdigest()[:12]


def gallery_keys(settings: Settings, create: bool = True) -> GalleryKeys:
    """From `gallery_keys`, or the key file under data_dir (created by a worker, never by the CLI)."""
    raw = configured_key(
        settings.gallery_keys.get_secret_value(), settings.data_dir, "gallery.key", "gallery_keys", create
    )
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    try:
        wrapper = MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError as exc:
        raise ConfigError("gallery_keys must be Fernet keys: 32 bytes, url-safe base64") from exc
    signers = tuple(hmac.new(k.encode(), b"facestream erasure receipts v1", hashlib.sha256).digest() for k in keys)
    return GalleryKeys(wrapper, signers)


class KeyRing:
    """The subjects' data keys this process knows: what the keys topic holds, applied in order."""

    def __init__(self, wrapper: MultiFernet) -> None:
        self.wrapper = wrapper
        self._keys: dict[str, Fernet] = {}
        self._subjects: dict[str, set[str]] = {}
        # Keys made here and not yet read back from the keys topic: their records go out again
        # with each point encrypted with them (the same record: compaction keeps one), so a point
        # never depends on a key record that was lost with a failed write.
        self._unconfirmed: dict[str, dict[str, Any]] = {}
        self.unreadable = 0  # key records the gallery key cannot unwrap (a wrong or missing key)

    def apply(self, key: str, value: bytes | None) -> None:
        """One record of the keys topic: a wrapped key, or a tombstone that destroys it."""
        subject, _, key_id = key.rpartition("/")
        self._unconfirmed.pop(key_id, None)
        if value is None:
            self._keys.pop(key_id, None)
            self._subjects.get(subject, set()).discard(key_id)
            return
        self._install(subject, key_id, orjson.loads(value))

    def _install(self, subject: str, key_id: str, record: dict[str, Any]) -> None:
        try:
            data_key = self.wrapper.decrypt(record["wrapped"].encode())
        except InvalidToken:
            self.unreadable += 1
            return
        self._keys[key_id] = Fernet(data_key)
        self._subjects.setdefault(subject, set()).add(key_id)

    def key_ids(self, subject: str) -> set[str]:
        return set(self._subjects.get(subject, ()))

    def key_for(self, subject: str) -> tuple[str, dict[str, Any] | None]:
        """A data key id for `subject`: an existing one, or a new one; with the record that stores
        it while it has not been read back from the keys topic (to be written there before any
        record encrypted with it), else None."""
        existing = sorted(self._subjects.get(subject, ()))
        if existing:
            return existing[0], self._unconfirmed.get(existing[0])
        key_id = uuid.uuid4().hex
        data_key = Fernet.generate_key()
        record = {
            "schema_version": 1,
            "event_type": "gallery.key",
            "subject_id": subject,
            "key_id": key_id,
            "wrapped": self.wrapper.encrypt(data_key).decode(),
        }
        self._install(subject, key_id, record)
        self._unconfirmed[key_id] = record
        return key_id, record

    def encrypt(self, key_id: str, vector: list[float]) -> str:
        return self._keys[key_id].encrypt(np.asarray(vector, np.float32).tobytes()).decode()

    def decrypt(self, key_id: str, token: str) -> list[float] | None:
        """The vector, or None when its key is not (or no longer) held: destroyed by an erasure."""
        box = self._keys.get(key_id)
        if box is None:
            return None
        try:
            raw = box.decrypt(token.encode())
        except InvalidToken:
            return None
        return [float(v) for v in np.frombuffer(raw, np.float32)]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys
