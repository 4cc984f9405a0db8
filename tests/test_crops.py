"""Probe crops behind signed, expiring links: served by a real notifier (crop server on loopback,
crops topic on the real Kafka) and refused when the link is altered, expired or its subscription
disabled."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import orjson

from facestream.config import Settings
from facestream.contracts.timeutil import now_iso
from facestream.services.notifier.crops import CropLinks
from tests.delivery_rig import Subscriber, match, notifier


def test_links_are_bound_to_event_subscription_and_time(tmp_path: Path) -> None:
    links = CropLinks(Settings(data_dir=tmp_path), "https://crops.example")
    event, now = "2b0e7c1e-1111-4222-8333-444455556666", time.time()
    url = httpx.URL(links.link(event, "cases", now + 60))
    assert url.path == f"/v1/crops/{event}"
    q = url.params
    assert links.check(event, "cases", q["expires"], q["signature"], now) is None
    assert links.check(event, "others", q["expires"], q["signature"], now) == "forbidden"
    assert links.check(event.replace("2b", "3b"), "cases", q["expires"], q["signature"], now) == "forbidden"
    assert links.check(event, "cases", str(int(q["expires"]) + 3600), q["signature"], now) == "forbidden"
    assert links.check(event, "cases", q["expires"], q["signature"], now + 61) == "expired"
    other = CropLinks(Settings(data_dir=tmp_path / "elsewhere"), "https://crops.example")  # another key
    assert other.check(event, "cases", q["expires"], q["signature"], now) == "forbidden"


async def test_a_delivered_payload_links_its_probe_crop(tmp_path: Path, kafka: str) -> None:
    receiver = await Subscriber().start()
    face = np.full((112, 112, 3), 90, np.uint8)
    cv2.circle(face, (56, 56), 30, (20, 160, 220), -1)
    jpeg = cv2.imencode(".jpg", face)[1].tobytes()
    try:
        async with notifier(tmp_path, kafka) as rig:
            await rig.add("cases", receiver)
            probe = match(1)
            crop = {
                "schema_version": 1,
                "event_type": "face.crop",
                "event_id": probe["event_id"],
                "image_id": probe["image_id"],
                "face_index": 0,
                "format": "jpeg",
                "data_b64": base64.b64encode(jpeg).decode(),
                "occurred_at": now_iso(),
            }
            await rig.producer.send_and_wait(rig.settings.topic("crops"), orjson.dumps(crop), key=b"k")
            await rig.publish(probe)
            await rig.wait_for(lambda: len(receiver.delivered()) == 1, what="the delivery")
            [[payload]] = receiver.delivered().values()
            link = payload["probe_crop_url"]
            async with httpx.AsyncClient(trust_env=False) as http:
                crops_dir = rig.settings.data_dir / "crops"
                await rig.wait_for(lambda: any(crops_dir.glob("*.jpg")), what="the crop to reach the server")
                served = await http.get(link)
                tampered = await http.get(link.replace("subscription=cases", "subscription=other"))
                await rig.store.disable("cases", "audit")
                after_disable = await http.get(link)
            # The sweeper removes crops once their match can no longer be delivered.
            assert rig.stage.crops is not None
            [path] = crops_dir.glob("*.jpg")
            old = time.time() - rig.settings.webhook_event_ttl_s - 1
            os.utime(path, (old, old))
            assert rig.stage.crops.sweep() == 1
            assert not path.exists()
    finally:
        await receiver.stop()
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["cache-control"] == "no-store"
    assert served.content == jpeg
    assert tampered.status_code == 403
    assert after_disable.status_code == 403
