"""The `facestream` command line against a running pipeline: enroll, submit, tail."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import ROOT, SAMPLES
from tests.harness import Pipeline
from tests.helpers import RETAIN


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
            RETAIN,
            "--source-attestation",
            "badge photo, given in person",
            "--enrolled-by",
            "clerk-1",
            "--face-at",  # the hint names the face (a point within it); the photo has just one
            "0.5,0.4",
        )
        assert enrolled.count("submitted enrol-") == 1
        [published] = [orjson.loads(v) for _, v in await pipeline.read("images")]
        assert published["intent"]["face_hint"] == {"point": [0.5, 0.4]}

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


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "facestream.services", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=ROOT,
        timeout=120,
    )


def test_mistakes_get_messages_not_tracebacks(kafka: str, tmp_path: Path) -> None:
    enrol = ["enroll", "--subject", "s", "--watchlist", "w", "--lawful-basis", "explicit_consent"]
    enrol += ["--consent-ref", "c/1", "--source-attestation", "given in person", "--enrolled-by", "clerk"]
    cases = [
        (
            ["tail", "matches"],
            {"FACESTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
            "cannot reach Kafka",
            "facestream kafka up",
        ),
        (["lag"], {"FACESTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, "cannot reach Kafka", "kafka_bootstrap"),
        (["status"], {"FACESTREAM_TOPIC_PREFIX": "nowhere"}, "no pipeline topics", "facestream kafka up"),
        (["tail", "-f"], {"FACESTREAM_TOPIC_PREFIX": "nowhere"}, "no topic nowhere.matches", "facestream kafka up"),
        (["tail", "-n", "-3"], {}, "expected a whole number", "'-3'"),
        (["lag", "--watch", "-1"], {}, "above 0", "'-1'"),
        (
            [*enrol, "--retain-until", "2030-02-30", str(SAMPLES)],
            {},
            "is neither a date (YYYY-MM-DD)",
            "--retain-until",
        ),
        ([*enrol, "--retain-until", RETAIN, "--face-at", "0.5", str(SAMPLES)], {}, "2 comma-separated", "--face-at"),
        (
            [*enrol, "--retain-until", RETAIN, "--face-box", "0,0,2,1", str(SAMPLES)],
            {},
            "fractions from 0 to 1",
            "0,0,2,1",
        ),
        ([*enrol, "--retain-until", RETAIN, str(tmp_path / "missing.jpg")], {}, "no such file", "missing.jpg"),
        ([*enrol, "--retain-until", RETAIN, str(tmp_path)], {}, "no images", str(tmp_path)),
        ([*enrol, "--retain-until", "2020-01-01", str(SAMPLES)], {}, "cannot enrol", "2020-01-01 has passed"),
        ([*enrol, "--retain-until", "2099-01-01", str(SAMPLES)], {}, "cannot enrol", "beyond the longest term"),
    ]
    for args, env, message, detail in cases:
        result = _run(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert detail in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "Unclosed" not in result.stderr


def test_a_closed_pipe_ends_quietly() -> None:
    """`facestream config show | head -1`: the reader goes away before the output is written."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "facestream.services", "config", "show"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even started writing
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 0, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
