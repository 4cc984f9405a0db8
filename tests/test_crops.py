"""Probe crops behind signed, expiring links: served by a real notifier (crop server on loopback,
crops topic on the real Kafka) and refused when the link is altered, expired or its subscription
disabled."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from pathlib import Path

import cv2
import httpx
import numpy as np
import orjson

from facestream.config import Settings, load_settings
from facestream.contracts.timeutil import now_iso
from facestream.crops import CropFinder
from facestream.io.kafka import TopicSpec, create_topics, delete_topics, producer, running
from facestream.services.notifier.crops import CropLinks
from tests.delivery_rig import Subscriber, match, notifier


def test_links_are_bound_to_event_subscription_place_and_time(tmp_path: Path) -> None:
    links = CropLinks(Settings(data_dir=tmp_path), "https://crops.example")
    event, now = "2b0e7c1e-1111-4222-8333-444455556666", time.time()
    url = httpx.URL(links.link(event, "cases", now + 60, "img-1", now - 5))
    assert url.path == f"/v1/crops/{event}"
    q = dict(url.params)
    assert q["image"] == "img-1"
    assert q["at"] == str(int(now - 5))
    assert links.check(event, q, now) is None
    for name, other in [("subscription", "others"), ("image", "img-2"), ("at", str(int(now) - 600))]:
        assert links.check(event, {**q, name: other}, now) == "forbidden", name
    assert links.check(event.replace("2b", "3b"), q, now) == "forbidden"
    assert links.check(event, {**q, "expires": str(int(q["expires"]) + 3600)}, now) == "forbidden"
    assert links.check(event, {k: v for k, v in q.items() if k != "at"}, now) == "forbidden"
    assert links.check(event, q, now + 61) == "expired"
    other = CropLinks(Settings(data_dir=tmp_path / "elsewhere"), "https://crops.example")  # another key
    assert other.check(event, q, now) == "forbidden"


async def test_a_delivered_payload_links_its_probe_crop(tmp_path: Path, kafka: str) -> None:
    """The crop is read back from the topic when the link is followed: no worker keeps a copy."""
    receiver = await Subscriber().start()
    face = np.full((112, 112, 3), 90, np.uint8)
    cv2.circle(face, (56, 56), 30, (20, 160, 220), -1)
    jpeg = cv2.imencode(".jpg", face)[1].tobytes()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("cases", receiver)
            probe, unwritten = match(1), match(2)

            def crop_of(event: dict[str, object]) -> bytes:
                return orjson.dumps(
                    {
                        "schema_version": 1,
                        "event_type": "face.crop",
                        "event_id": event["event_id"],
                        "image_id": event["image_id"],
                        "face_index": 0,
                        "format": "jpeg",
                        "data_b64": base64.b64encode(jpeg).decode(),
                        "occurred_at": now_iso(),
                    }
                )

            for n in range(30):  # other searches' crops around it, on every partition
                other = match(100 + n)
                await rig.producer.send(rig.settings.topic("crops"), crop_of(other), key=other["image_id"].encode())
            topic = rig.settings.topic("crops")
            await rig.producer.send_and_wait(topic, crop_of(probe), key=probe["image_id"].encode())
            await rig.publish(probe)
            await rig.publish(unwritten)
            await rig.wait_for(lambda: len(receiver.delivered()) == 2, what="the deliveries")
            links = {p["event_id"]: p["probe_crop_url"] for [p] in receiver.delivered().values()}
            link = links[probe["event_id"]]
            async with httpx.AsyncClient(trust_env=False) as http:
                served = await http.get(link)
                missing = await http.get(links[unwritten["event_id"]])
                tampered = await http.get(link.replace("subscription=cases", "subscription=other"))
                elsewhere = await http.get(link.replace(f"image={probe['image_id']}", "image=img-x"))
                await rig.store.disable("cases", "audit")
                after_disable = await http.get(link)
            kept = [p for p in rig.settings.data_dir.rglob("*") if p.suffix == ".jpg"]
    finally:
        await receiver.stop()
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["cache-control"] == "no-store"
    assert served.content == jpeg
    assert missing.status_code == 404
    assert tampered.status_code == 403
    assert elsewhere.status_code == 403
    assert after_disable.status_code == 403
    assert kept == []  # no probe face on the worker's disk


async def test_the_finder_reads_a_crop_back_and_nothing_between_requests(kafka: str) -> None:
    """Each crop is found on its image's partition from its submission time on. Between requests
    the reader fetches nothing: a consumer left assigned would fetch ahead (with this reader's 10 ms
    wait, a hundred empty fetches a second) or make the next request wait out a long poll (it took
    0.5 s a crop before). Fetches are counted at the client's `send`."""
    settings = load_settings(topic_prefix=f"t{uuid.uuid4().hex[:10]}", environment=False)
    topic = settings.topic("crops")
    await create_topics(settings, [TopicSpec(topic, 3)])
    finder = CropFinder(settings)
    try:
        written: dict[str, tuple[str, bytes]] = {}
        submitted = time.time()
        async with running(producer(settings)) as prod:
            for n in range(60):
                image_id, event_id, data = f"img-{n}", str(uuid.uuid4()), os.urandom(64)
                written[event_id] = (image_id, data)
                crop = {"event_id": event_id, "image_id": image_id, "data_b64": base64.b64encode(data).decode()}
                await prod.send(topic, orjson.dumps(crop), key=image_id.encode())
            await prod.flush()
        chosen = list(written.items())[::12]
        assert await finder.find(chosen[0][1][0], chosen[0][0], submitted) == chosen[0][1][1]
        assert finder._reader is not None
        fetches = []
        send = finder._reader._client.send

        async def counted(node_id: int, request: object, **kwargs: object) -> object:
            if type(request).__name__.startswith("FetchRequest"):
                fetches.append(request)
            return await send(node_id, request, **kwargs)

        finder._reader._client.send = counted  # type: ignore[method-assign]
        for event_id, (image_id, data) in chosen[1:]:
            assert await finder.find(image_id, event_id, submitted) == data
        assert fetches  # it did read
        after = len(fetches)
        await asyncio.sleep(1.0)
        assert len(fetches) == after  # and then nothing
        assert await finder.find("img-3", str(uuid.uuid4()), submitted) is None  # not in the topic
        assert await finder.find("img-3", chosen[0][0], time.time() + 3600) is None  # not written yet then
    finally:
        await finder.close()
        await delete_topics(settings)
