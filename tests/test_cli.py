"""The `facestream` command line against a running pipeline: enroll, submit, tail."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson

from tests.conftest import SAMPLES
from tests.harness import Pipeline


async def cli(config: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "facestream.services",
        *args,
        env={**os.environ, "FACESTREAM_CONFIG": str(config)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_enroll_submit_tail(kafka: str, tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, [SAMPLES])
    await pipeline.start()
    try:
        enrolled = await cli(
            pipeline.config,
            "enroll",
            str(SAMPLES / "gallery" / "azure_family2_lady"),
            "--subject",
            "lady",
            "--watchlist",
            "staff",
            "--lawful-basis",
            "explicit_consent",
            "--consent-ref",
            "c/9",
            "--retain-until",
            "2030-01-01",
            "--source-attestation",
            "badge photo, given in person",
            "--enrolled-by",
            "clerk-1",
        )
        assert enrolled.count("submitted enrol-") == 1

        async def done_enrolling() -> bool:
            return any(m["status"] == "enrolled" for m in await pipeline.events("matches"))

        await pipeline.wait_for(done_enrolling, what="the enrolment")
        submitted = await cli(
            pipeline.config,
            "submit",
            str(SAMPLES / "probes" / "azure_family2_lady"),
            "--purpose",
            "badge check",
            "--case-ref",
            "C-7",
            "--requester",
            "guard-2",
        )
        assert submitted.count("(search)") == 2
        await pipeline.wait_for(lambda: len(pipeline.receiver.deliveries) >= 2, what="two webhooks")
        lines = [orjson.loads(line) for line in (await cli(pipeline.config, "tail", "matches")).splitlines()]
        assert sorted(m["status"] for m in lines) == ["enrolled", "match", "match"]
        assert all("embedding" not in m and "intent" not in m for m in lines)
    finally:
        await pipeline.stop()
