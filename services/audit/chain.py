"""The audit chain: records hashed over canonical JSON, each naming the hash of the one before,
and checkpoints signed with the audit key; `verify` walks a chain and names the first break.

Canonical JSON here: keys sorted, no whitespace, UTF-8, numbers as orjson writes them (the
shortest form that reads back the same). The hash of a record is the SHA-256 of the record
without its `hash` field in that encoding.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from facestream import contracts
from facestream.contracts.timeutil import now_iso
from facestream.errors import MalformedEvent

GENESIS = "0" * 64


def canonical(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def digest(record: dict[str, Any]) -> str:
    """The hash of `record`: SHA-256 over its canonical JSON without `hash`."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def key_from_seed(secret: str) -> Ed25519PrivateKey:
    """The Ed25519 key whose 32-byte seed is `secret` (URL-safe base64, as the key files hold)."""
    seed = base64.urlsafe_b64decode(secret.strip().encode())
    if len(seed) != 32:
        raise ValueError(f"the audit signing key must be 32 bytes in URL-safe base64; it is {len(seed)} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def _statement(seq: int, head: str, records: int) -> bytes:
    return canonical({"seq": seq, "hash": head, "records": records})


@dataclass
class Head:
    """Where the chain ends: the next seq, the hash of the last record, entries since the last
    checkpoint."""

    seq: int = 0
    hash: str = GENESIS
    unsealed: int = 0


@dataclass
class Chainer:
    """Chains entries and checkpoints onto `head`. Pure: the sequencer writes what it returns."""

    key: Ed25519PrivateKey
    head: Head = field(default_factory=Head)

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        record["hash"] = digest(record)
        self.head = Head(record["seq"] + 1, record["hash"], self.head.unsealed)
        return record

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        record = {
            "schema_version": 1,
            "event_type": "audit.record",
            "seq": self.head.seq,
            "prev_hash": self.head.hash,
            "sequenced_at": now_iso(),
            "entry": entry,
        }
        out = self._append(record)
        self.head.unsealed += 1
        return out

    def checkpoint(self) -> dict[str, Any]:
        """A signed checkpoint of the chain as it ends now (only after at least one entry)."""
        if self.head.unsealed < 1:
            raise ValueError("nothing chained since the last checkpoint")
        signature = self.key.sign(_statement(self.head.seq - 1, self.head.hash, self.head.unsealed))
        record = {
            "schema_version": 1,
            "event_type": "audit.checkpoint",
            "seq": self.head.seq,
            "prev_hash": self.head.hash,
            "sequenced_at": now_iso(),
            "records": self.head.unsealed,
            "key_id": key_id(self.key.public_key()),
            "signature": base64.b64encode(signature).decode(),
        }
        out = self._append(record)
        self.head.unsealed = 0
        return out


def head_of(last: dict[str, Any], unsealed: int) -> Head:
    """The head after `last`, the chain's last record as read back from the topic."""
    return Head(int(last["seq"]) + 1, str(last["hash"]), unsealed)


@dataclass(frozen=True)
class Problem:
    """The first place a chain is broken: the record's seq (or None) and offset, and what is wrong."""

    offset: int | None
    seq: int | None
    kind: str  # modified, removed, reordered, truncated, forged, unreadable, rewritten
    detail: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "a record"
        at = f" (offset {self.offset})" if self.offset is not None else ""
        return f"{where}{at}: {self.kind}: {self.detail}"


@dataclass
class Verdict:
    records: int = 0  # entries
    checkpoints: int = 0
    unsealed: int = 0  # entries after the last checkpoint (a checkpoint will cover them)
    head: Head = field(default_factory=Head)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _signed(record: dict[str, Any], public: Ed25519PublicKey) -> bool:
    statement = _statement(record["seq"] - 1, record["prev_hash"], record["records"])
    try:
        public.verify(base64.b64decode(record["signature"]), statement)
    except (InvalidSignature, ValueError):
        return False
    return bool(record["key_id"] == key_id(public))


def _parse(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise MalformedEvent("a record without a value")
    value = orjson.loads(raw)
    kind = value.get("event_type") if isinstance(value, dict) else None
    if kind not in ("audit.record", "audit.checkpoint"):
        raise MalformedEvent(f"not an audit record (event_type {kind!r})")
    contracts.validate(kind, value)
    return value  # type: ignore[no-any-return]


def verify(
    chain: Sequence[tuple[int, bytes | None]],
    public: Ed25519PublicKey,
    witnesses: Iterable[tuple[int, bytes | None]] = (),
) -> Verdict:
    """Walk `chain` ((offset, value) in topic order) from seq 0 and return the first problem:
    a record whose content does not match its hash, or whose hash was recomputed after a change
    (the next record's prev_hash is not its hash): modified; a seq missing: removed; a seq out of
    place: reordered; a chain starting after seq 0: truncated; a checkpoint whose signature does
    not hold for the chain before it (the chain recomputed from a change on): rewritten. Then that
    every witnessed checkpoint is in the chain as signed (a chain ending before one: truncated)."""
    verdict = Verdict()
    expected, prev, prev_offset = 0, GENESIS, None
    seen: dict[int, str] = {}  # checkpoints: seq -> hash
    parsed: list[tuple[int, dict[str, Any]]] = []
    for offset, raw in chain:
        try:
            parsed.append((offset, _parse(raw)))
        except (MalformedEvent, orjson.JSONDecodeError) as exc:
            verdict.problem = Problem(offset, None, "unreadable", str(exc)[:300])
            return verdict
    seqs = [record["seq"] for _, record in parsed]
    for index, (offset, record) in enumerate(parsed):
        seq = record["seq"]
        if digest(record) != record["hash"]:
            verdict.problem = Problem(offset, seq, "modified", "its content does not match its hash")
            return verdict
        if seq != expected:
            if expected == 0 and seq not in seqs[index + 1 :] and 0 not in seqs:
                kind, detail = "truncated", f"the chain begins at seq {seq}: the records before it are gone"
            elif expected in seqs[index + 1 :] or seq < expected:
                kind, detail = "reordered", f"seq {seq} stands where seq {expected} belongs"
            else:
                missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected} to {seq - 1}"
                kind, detail = "removed", f"{missing} missing before it"
            verdict.problem = Problem(offset, seq, kind, detail)
            return verdict
        if record["prev_hash"] != prev:
            verdict.problem = Problem(
                prev_offset,
                seq - 1,
                "modified",
                f"changed with its hash recomputed: seq {seq}'s prev_hash is not its hash",
            )
            return verdict
        if record["event_type"] == "audit.checkpoint":
            if record["records"] != verdict.unsealed or not _signed(record, public):
                first = seq - verdict.unsealed
                verdict.problem = Problem(
                    offset,
                    seq,
                    "rewritten",
                    f"this checkpoint's signature does not hold for the chain before it: seqs {first} to {seq - 1} "
                    "were changed and the chain recomputed from there, or the checkpoint was forged",
                )
                return verdict
            verdict.checkpoints += 1
            verdict.unsealed = 0
            seen[seq] = record["hash"]
        else:
            verdict.records += 1
            verdict.unsealed += 1
        expected, prev, prev_offset = seq + 1, record["hash"], offset
    verdict.head = Head(expected, prev, verdict.unsealed)
    verdict.problem = _witnessed(witnesses, public, verdict, seen)
    return verdict


def _witnessed(
    witnesses: Iterable[tuple[int, bytes | None]], public: Ed25519PublicKey, verdict: Verdict, seen: dict[int, str]
) -> Problem | None:
    for offset, raw in witnesses:
        try:
            witness = _parse(raw)
        except (MalformedEvent, orjson.JSONDecodeError):
            continue  # a witness is a second copy: an unreadable one proves nothing either way
        if witness["event_type"] != "audit.checkpoint" or not _signed(witness, public):
            continue
        seq = witness["seq"]
        if seq >= verdict.head.seq:
            return Problem(
                None,
                seq,
                "truncated",
                f"the chain ends at seq {verdict.head.seq - 1}, but a signed checkpoint at seq {seq} "
                f"(witness offset {offset}) shows it went further",
            )
        if seen.get(seq) != witness["hash"]:
            return Problem(None, seq, "rewritten", "the checkpoint at this seq is not the one its witness holds")
    return None
