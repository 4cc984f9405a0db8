"""The gallery is a log; a matcher's index is a view of it.

The compacted topic `gallery` (one partition: every reader applies the same records in the same
order) is the system of record: one `gallery.point` record per enrolled face, keyed by point id
(its embedding encrypted with the subject's data key, see services/matcher/keys.py), a tombstone
under that key when the point is removed, and a `gallery.erasure` record per erased subject. The
matcher writes enrolments there; every matcher replica applies the topic, in order, to an index:

- with the embedded engine (the default), each replica owns an index on its local disk, in a
  directory it holds a lock on (so two workers on one machine take two directories), next to the
  offset it has applied up to. After a restart it resumes from that offset; with an empty disk
  (or an index without its offset) it builds the index from the beginning of the topic;
- with the Qdrant server, the collection is the one index all replicas share: one consumer group
  (`<app_id>-gallery-indexer`) applies the topic to it and commits its offsets in Kafka.

A replica is ready (`caught_up`) once it has applied everything that was in the topic when it
started; the matcher answers no search before.

Each replica reports, every `replica_heartbeat_s` and at once after applying an erasure, how far
it has applied the topic (`gallery.replica` records in the compacted `gallery.replicas`, keyed by
replica id, `stopped` when it stops): an erasure's receipt names each live replica that has
applied it (services/matcher/eraser.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from facestream import contracts
from facestream.config import Settings
from facestream.contracts.timeutil import now_iso, parse_iso
from facestream.errors import ConfigError
from facestream.io.kafka import consumer, partition_reader, producer, read_to_end
from facestream.ops.logs import get_logger
from facestream.runtime.tasks import cancel
from facestream.services.matcher.gallery import Gallery, GalleryPoint
from facestream.services.matcher.keys import KeyRing

log = get_logger(__name__)
OFFSETS = "applied.json"
# The gallery is written rarely; a reader waiting for "up to the end" must not sit out the
# broker's default long poll (500 ms) on every empty fetch. Only for the paused-between-reads
# readers (partition_reader): the live follower long-polls (a record written ends a long poll at
# once), or it would ask the broker 50 times a second, forever, for nothing.
FETCH_WAIT_MS = 20
MAX_REPLICAS = 64


def claim_directory(base: Path) -> tuple[Path, int]:
    """The first of `base`/replica-0, replica-1, … that no other process holds; the returned
    descriptor holds its lock until it is closed (or the process ends, however it ends)."""
    base.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_REPLICAS):
        folder = base / f"replica-{n}"
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return folder, fd
    raise RuntimeError(f"all {MAX_REPLICAS} gallery replica directories under {base} are in use")


def point_of(record: dict[str, Any], vector: list[float]) -> GalleryPoint:
    """The index entry of a `gallery.point` record: its vector and what a search returns or filters on."""
    payload = {k: record[k] for k in ("subject_id", "watchlist", "image_id", "source", "enrolled_at")}
    payload["model"] = f"{record['model']['name']}/{record['model']['version']}"
    payload.update({k: record["consent"][k] for k in ("lawful_basis", "consent_ref", "retain_until", "enrolled_by")})
    return GalleryPoint(record["point_id"], vector, payload)


class Replica:
    """Applies the gallery topic to `gallery`, with the data keys from the keys topic. `folder`
    (embedded engine): the index's directory, where the applied offset is kept; None (Qdrant
    server): offsets are the indexer group's."""

    def __init__(self, settings: Settings, gallery: Gallery, folder: Path | None, ring: KeyRing) -> None:
        self.settings = settings
        self.gallery = gallery
        self.folder = folder
        self.ring = ring
        self.tp = TopicPartition(settings.topic("gallery"), 0)
        self.keys_tp = TopicPartition(settings.topic("gallery.keys"), 0)
        self.position = 0  # the next offset of the gallery topic to apply
        self.caught_up = False
        self.applied = 0  # gallery records applied since start
        self.erased: dict[str, str] = {}  # subject: requested_at of its latest erasure
        self._parked: dict[str, dict[str, Any]] = {}  # points whose data key has not been read yet
        self._keys: AIOKafkaConsumer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._report = asyncio.Event()  # an erasure was applied: report it now, not at the next beat
        self._erased_since_report = False
        self._lock = asyncio.Lock()  # one applier at a time (the follow loop, or a sync)
        host = socket.gethostname()
        # Its index's folder names an embedded replica (a restart on it is the same replica); a
        # member of the indexer group is its process.
        self.replica_id = f"{host}/{folder.name}" if folder is not None else f"{host}/pid-{os.getpid()}"

    @property
    def group(self) -> str | None:
        return None if self.folder is not None else f"{self.settings.app_id}-gallery-indexer"

    def _load_offset(self) -> int | None:
        assert self.folder is not None
        try:
            saved = orjson.loads((self.folder / OFFSETS).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if saved.get("topic") != self.tp.topic:
            return None
        self.erased = dict(saved.get("erased", {}))
        return int(saved["offset"])

    def _save_offset(self) -> None:
        assert self.folder is not None
        tmp = self.folder / f"{OFFSETS}.tmp"
        tmp.write_bytes(orjson.dumps({"topic": self.tp.topic, "offset": self.position, "erased": self.erased}))
        os.replace(tmp, self.folder / OFFSETS)  # atomic: the offset on disk is always a whole one

    async def start(self) -> None:
        """Open the index, read every data key, position the reader, and apply the gallery topic
        up to its end as it is now."""
        if self.folder is not None:
            saved = self._load_offset()
            index = self.folder / "index"
            if saved is not None and not index.exists():
                saved = None  # an offset without its index: the index is built again from the log
                self.erased = {}
            if saved is None and index.exists():
                # An index without its offset cannot say what it holds (removals may be missed):
                # it is built again from the log.
                log.warning("gallery_index_rebuilt", reason="no applied offset beside the index")
                shutil.rmtree(index)
            self.position = saved or 0
        await self.gallery.open()
        self._producer = producer(self.settings)
        await self._producer.start()
        self._keys = await partition_reader(self.settings, self.keys_tp, FETCH_WAIT_MS)
        await self.sync_keys()
        if self.ring.unreadable:
            # Before anything is applied: points parked for want of their keys would leave an index
            # that its saved offset says is complete.
            raise ConfigError(
                f"{self.ring.unreadable} data key(s) in {self.keys_tp.topic} do not unwrap with this gallery key: "
                "start with the gallery_keys that wrote them (the new one first, the old after it)"
            )
        if self.group is None:
            self._consumer = consumer(self.settings)
            await self._consumer.start()
            self._consumer.assign([self.tp])
            self._consumer.seek(self.tp, self.position)
        else:
            await self._load_erasures()
            self._consumer = consumer(self.settings, "gallery", group_id=self.group, enable_auto_commit=False)
            await self._consumer.start()
        end = (await self._consumer.end_offsets([self.tp]))[self.tp]
        where = str(self.folder) if self.folder is not None else None
        log.info(
            "gallery_replica_catching_up",
            replica_id=self.replica_id,
            start=self.position,
            end=end,
            folder=where,
            group=self.group,
        )
        self._beat = asyncio.create_task(self._heartbeat())
        while not await self._reached(end):
            await self._poll()
        self.caught_up = True
        self._report.set()
        log.info("gallery_replica_ready", applied=self.applied, position=self.position, parked=len(self._parked))
        self._task = asyncio.create_task(self._follow())

    async def _load_erasures(self) -> None:
        """The shared index keeps no file beside it: the erasures applied so far (and so the
        enrolments that must not survive them) are read again from the topic, where they are kept."""

        def note(record: Any) -> None:
            if record.value is not None and record.key and record.key.startswith(b"erasure/"):
                event = orjson.loads(record.value)
                self._note_erasure(event["subject_id"], event["requested_at"])

        scan = await partition_reader(self.settings, self.tp, FETCH_WAIT_MS)
        try:
            await read_to_end(scan, self.tp, note)
        finally:
            await scan.stop()

    def _note_erasure(self, subject: str, requested_at: str) -> None:
        previous = self.erased.get(subject)
        if previous is None or parse_iso(requested_at) > parse_iso(previous):
            self.erased[subject] = requested_at

    async def applied_through(self) -> int:
        """The next gallery offset this replica's index will apply (everything before is in it)."""
        if self.group is None:
            return self.position
        assert self._consumer is not None
        return (await self._consumer.committed(self.tp)) or 0  # the shared index, by whichever member

    async def report(self, state: str) -> None:
        assert self._producer is not None
        record = {
            "schema_version": 1,
            "event_type": "gallery.replica",
            "replica_id": self.replica_id,
            "state": state,
            "applied_through": await self.applied_through(),
            "at": now_iso(),
        }
        topic = self.settings.topic("gallery.replicas")
        await self._producer.send_and_wait(topic, contracts.dumps(record), key=self.replica_id.encode())

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.report("live" if self.caught_up else "catching_up")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: the next beat tries again
                log.warning("gallery_replica_report_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.replica_heartbeat_s):
                    await self._report.wait()
            self._report.clear()

    async def sync_keys(self) -> None:
        """Read the keys topic up to its end as it is now."""
        assert self._keys is not None
        await read_to_end(
            self._keys,
            self.keys_tp,
            lambda record: self.ring.apply(record.key.decode() if record.key else "", record.value),
        )

    async def sync(self) -> None:
        """Apply the gallery topic (and read the keys) up to their ends as they are now."""
        assert self._consumer is not None
        end = (await self._consumer.end_offsets([self.tp]))[self.tp]
        while not await self._reached(end):
            await self._poll()

    async def _reached(self, end: int) -> bool:
        if self.group is None:
            return self.position >= end
        assert self._consumer is not None
        committed = await self._consumer.committed(self.tp)  # by whichever member indexes
        return (committed or 0) >= end

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the index or the broker failed: try again, never stop following
                log.error("gallery_apply_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        assert self._consumer is not None
        async with self._lock:
            batches = await self._consumer.getmany(self.tp, timeout_ms=200, max_records=1000)
            records = batches.get(self.tp, [])
            if not records and not self._parked:
                return
            await self.sync_keys()  # every key written before these records is known now
            await self._retry_parked()
            if not records:
                return
            await self.apply(records)
            self.position = records[-1].offset + 1
            if self.group is None:
                self._save_offset()  # after the index is flushed: the offset never runs ahead of it
            else:
                await self._consumer.commit({self.tp: self.position})
            if self._erased_since_report:  # the position that covers it is saved: say so
                self._erased_since_report = False
                self._report.set()

    def _stale(self, record: dict[str, Any]) -> bool:
        """An enrolment submitted at or before the subject's latest erasure: it does not survive it."""
        erased_at = self.erased.get(record["subject_id"])
        submitted = record.get("submitted_at") or record["enrolled_at"]
        return erased_at is not None and parse_iso(submitted) <= parse_iso(erased_at)

    def _vector(self, record: dict[str, Any]) -> list[float] | None:
        sealed = record["embedding_enc"]
        return self.ring.decrypt(sealed["key_id"], sealed["token"])

    async def _retry_parked(self) -> None:
        ready = []
        for point_id, record in list(self._parked.items()):
            if self._stale(record):
                del self._parked[point_id]
            elif record["embedding_enc"]["key_id"] in self.ring:
                del self._parked[point_id]
                vector = self._vector(record)
                if vector is not None:
                    ready.append(point_of(record, vector))
        if ready:
            await self.gallery.upsert(ready)

    async def apply(self, records: list[Any]) -> None:
        """Apply records in order: runs of upserts and removals, each run in one call."""
        run: list[GalleryPoint] = []
        removed: list[str] = []

        async def flush() -> None:
            nonlocal run, removed
            if run:
                await self.gallery.upsert(run)
            if removed:
                await self.gallery.delete_points(removed)
            run, removed = [], []

        for record in records:
            key = record.key.decode() if record.key else ""
            if record.value is None:
                if run:
                    await flush()
                removed.append(key)
                self._parked.pop(key, None)
                continue
            if removed:
                await flush()
            try:
                event = orjson.loads(record.value)
                if event.get("event_type") == "gallery.erasure":
                    contracts.validate("gallery.erasure", event)
                    await flush()
                    await self._erase(event)
                    self._erased_since_report = True
                    continue
                contracts.validate("gallery.point", event)
            except Exception as exc:  # only the matcher writes here; a bad record is a bug, not input
                log.error("gallery_record_invalid", offset=record.offset, error=str(exc)[:300])
                continue
            if self._stale(event):
                continue
            vector = self._vector(event)
            if vector is not None:
                run.append(point_of(event, vector))
            elif event["embedding_enc"]["key_id"] not in self.ring:
                # Its key may still be on its way (written beside it), or destroyed by an erasure
                # this replica has yet to read: kept aside until one or the other is known.
                self._parked[event["point_id"]] = event
        await flush()
        self.applied += len(records)

    async def _erase(self, erasure: dict[str, Any]) -> None:
        subject = erasure["subject_id"]
        self._note_erasure(subject, erasure["requested_at"])
        await self.gallery.delete_subject(subject)
        for point_id, record in list(self._parked.items()):
            if record["subject_id"] == subject:
                del self._parked[point_id]
        log.info("gallery_subject_erased", request_id=erasure["request_id"])

    async def stop(self) -> None:
        await cancel(self._task)
        await cancel(self._beat)
        if self._producer is not None and self._consumer is not None:
            try:  # erasures from now on wait for it no more
                await self.report("stopped")
            except Exception as exc:  # its heartbeats stop anyway: it is not live for long
                log.warning("gallery_replica_report_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        clients, self._consumer, self._keys, self._producer = (
            (self._consumer, self._keys, self._producer),
            None,
            None,
            None,
        )
        for client in clients:  # stopping twice stops nothing twice
            if client is not None:
                await client.stop()
        await self.gallery.close()
