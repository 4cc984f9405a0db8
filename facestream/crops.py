"""Probe face crops, read back from the `crops` topic when someone with the right to see one asks.

The detector publishes the aligned probe face of every search to `crops`, keyed by its image id,
for as long as its match may be delivered. Nothing else keeps a copy: a reviewer's page and a
subscriber's signed link both find the one crop they need here, so no worker writes every probe
face to its disk (most never match anyone) and adding notifier workers adds no work per crop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from facestream.config import Settings
from facestream.contracts.timeutil import parse_iso
from facestream.io.kafka import close, consumer, topic_partitions

CROP_SCAN = 20_000  # records read at most to find one crop
CLOCK_SKEW_S = 60.0  # the publisher's clock (submitted_at) against the broker's timestamps


def submitted(match: dict[str, Any]) -> float:
    """When a match's image was submitted (the publisher's clock, else the match's own time): a
    crop is looked for from then on."""
    return parse_iso(match.get("submitted_at") or match["occurred_at"]).timestamp()


class CropFinder:
    """Finds one crop without an index: on the partition its image id (the record key) hashes to,
    from shortly before the image was submitted (the crop was written after that), at most
    `CROP_SCAN` records on. One reader, used by one request at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reader: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def find(self, image_id: str, event_id: str, submitted: float) -> bytes | None:
        """The JPEG of the crop the detector wrote for match `event_id` of image `image_id`, or
        None when the topic no longer (or not yet) holds it."""
        topic = self.settings.topic("crops")
        partitions = (await topic_partitions(self.settings, [topic])).get(topic, [])
        if not partitions:
            return None
        tp = TopicPartition(topic, DefaultPartitioner()(image_id.encode(), partitions, partitions))
        async with self._lock:
            if self._reader is None:
                # Reads start at a seek and stop when found: never wait on the broker for more.
                self._reader = consumer(self.settings, fetch_max_wait_ms=10)
                await self._reader.start()
            reader = self._reader
            reader.assign([tp])
            reader.pause(tp)  # fetched only while scanning, never ahead between requests
            start = (await reader.offsets_for_times({tp: int((submitted - CLOCK_SKEW_S) * 1000)}))[tp]
            end = (await reader.end_offsets([tp]))[tp]
            if start is None:
                return None
            reader.seek(tp, start.offset)
            reader.resume(tp)
            try:
                scanned = 0
                while scanned < CROP_SCAN and await reader.position(tp) < end:
                    for record in (await reader.getmany(tp, timeout_ms=1000)).get(tp, []):
                        scanned += 1
                        crop = orjson.loads(record.value) if record.value else {}
                        if crop.get("event_id") == event_id:
                            return base64.b64decode(crop["data_b64"])
            finally:
                reader.pause(tp)
        return None

    async def close(self) -> None:
        await close(self._reader)
        self._reader = None
