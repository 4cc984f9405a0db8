"""The wheel, installed on its own, works without the repository.

Builds the wheel, checks what it ships (every contract schema, the dashboard, the four services;
no dev tools, tests or benchmarks), installs it into a fresh virtual environment outside the
repository and, from there, prepares the model, checks a settings file and enrols and searches a
sample subject through the detector, embedder and matcher stages, every event checked against
the installed contracts. A schema, a static file or a module left out of the wheel, or code that
reaches into the source tree, fails here although the editable install hides it everywhere else.

Needs network access to PyPI: pip builds the wheel with build isolation, which fetches the build
backend (setuptools>=77).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from facestream.config import to_toml
from tests.conftest import ROOT, SAMPLES

SERVICES = ("detector", "embedder", "matcher", "notifier")
SUBJECT = "azure_family2_man"

# Runs in the new environment, so it may import only what the wheel installed (and the
# dependencies). Arguments: repository, dependency dirs (os.pathsep), settings file, enrol photo,
# search photo. Prints one JSON line.
SCRIPT = """
import asyncio, collections, json, os, sys, sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

repo = Path(sys.argv[1]).resolve()
deps = {Path(p).resolve() for p in sys.argv[2].split(os.pathsep)}
settings_file, enrol_photo, search_photo = (Path(a) for a in sys.argv[3:6])
site = Path(sysconfig.get_paths()["purelib"]).resolve()

import datetime

import facestream
from facestream import client, contracts
from facestream.config import load_settings
from facestream.ops.logs import configure
from facestream.ops.server import DASHBOARD
from facestream.runtime.stage import Record
from facestream.services.detector.stage import DetectorStage
from facestream.services.embedder.stage import EmbedderStage
from facestream.services.matcher.stage import MatcherStage

assert Path(facestream.__file__).resolve().is_relative_to(site), facestream.__file__
for entry in sys.path:  # the dependencies live in the main venv, which may lie in the repository
    path = Path(entry or ".").resolve()
    assert not path.is_relative_to(repo) or path in deps, f"sys.path has {entry} from the repository"
assert DASHBOARD.is_file(), DASHBOARD
configure("WARNING")  # logs to stderr: stdout carries the summary only

validated = collections.Counter()


def records(outputs, topic):
    chosen = [o for o in outputs if o.topic == topic]
    return [Record(contracts.dumps(o.value), o.key.encode(), topic, 0, i) for i, o in enumerate(chosen)]


async def run(stage, records):
    produced = []
    for outcome in await stage.process(records):
        if outcome.error is not None:
            raise outcome.error
        produced += outcome.outputs
    for output in produced:
        event_type = output.value["event_type"]
        contracts.validate(event_type, output.value)
        assert contracts.reference_errors(event_type, output.value) == [], output.value
        validated[event_type] += 1
    return produced


async def submit(stages, event):
    detector, embedder, matcher = stages
    contracts.validate("image.submitted", event)
    faces = await run(detector, [Record(contracts.dumps(event), event["image_id"].encode(), "images")])
    embedded = await run(embedder, records(faces, "faces"))
    matched = await run(matcher, records(embedded, "embeddings"))
    return [o.value for o in faces + matched if o.topic == "matches"]


async def main():
    settings = load_settings(settings_file)
    with ThreadPoolExecutor(settings.workers) as pool:
        # The stages alone: the matcher without its replica's log-following (no broker here).
        matcher = MatcherStage(settings, follow=False)
        stages = (DetectorStage(settings, pool), EmbedderStage(settings, executor=pool), matcher)
        for stage in stages:
            await stage.start()
        try:
            intent = client.enroll_intent(
                enrol_photo.parent.name,
                "wheel-test",
                lawful_basis="explicit_consent",
                consent_ref="consent/wheel-test",
                retain_until=(datetime.date.today() + datetime.timedelta(days=365)).isoformat(),
                source_attestation="sample photo (MIT), see samples/SOURCES.md",
                enrolled_by="test-suite",
            )
            enrol = client.submission("enrol-1", client.image_ref(enrol_photo, settings), intent, "wheel-test")
            enrolled = await submit(stages, enrol)
            intent = client.search_intent("wheel test", "CASE-WHEEL", "test-suite")
            search = client.submission("search-1", client.image_ref(search_photo, settings), intent, "wheel-test")
            searched = await submit(stages, search)
        finally:
            for stage in reversed(stages):
                await stage.stop()
    modules = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] == "facestream"}
    outside = {n: f for n, f in modules.items() if not f or not Path(f).resolve().is_relative_to(site)}
    assert not outside, f"modules not from the installed wheel: {outside}"
    assert not [n for n in sys.modules if n.startswith("__editable__")], "the editable install's finder ran"
    print(json.dumps({
        "facestream": facestream.__file__,
        "enrolled": [m["status"] for m in enrolled],
        "searched": [
            {"status": m["status"], "candidates": [[c["subject_id"], c["rank"], c["score"]] for c in m["candidates"]]}
            for m in searched
        ],
        "validated": validated,
    }))


asyncio.run(main())
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run a command; its stdout, or a failed assertion carrying its stderr."""
    command = [str(a) for a in args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-6000:]}"
    return done.stdout


def test_installed_wheel_works_without_the_repository(tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(ROOT.resolve()), "the tmp dir must lie outside the repository"
    # The repository must not leak in through the environment either.
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"} and not k.startswith("FACESTREAM_")
    }

    # 1. Build the wheel and check what it ships.
    # From a copy of the files git knows (links kept as links): a build/ left in the checkout would
    # let setuptools ship modules the tree no longer has.
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        origin, copy = ROOT / name, source / name
        if not origin.exists() and not origin.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        copy.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            copy.symlink_to(os.readlink(origin))
        else:
            shutil.copy2(origin, copy)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", source, cwd=tmp_path, env=env)
    [wheel] = (tmp_path / "dist").glob("facestream-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    schemas = {f"facestream/contracts/schemas/{p.name}" for p in (ROOT / "contracts").glob("*.schema.json")}
    assert schemas, "no schemas found in contracts/"
    assert schemas <= names, f"schemas missing from the wheel: {sorted(schemas - names)}"
    assert "facestream/ops/static/dashboard.html" in names
    for service in SERVICES:
        modules = {f"facestream/services/{service}/{p.name}" for p in (ROOT / "services" / service).glob("*.py")}
        assert f"facestream/services/{service}/__init__.py" in modules
        assert modules <= names, f"{service} modules missing from the wheel: {sorted(modules - names)}"
    dev = sorted(n for n in names if {"devtools", "tests", "bench"} & set(n.split("/")[:-1]))
    assert not dev, f"dev files in the wheel: {dev}"

    # 2. A fresh environment: the wheel, and the main venv's dependencies through a .pth file
    # (no second download of onnxruntime, opencv...). Python does not process .pth files inside
    # a directory a .pth adds, so the editable install of facestream stays invisible there.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    python, facestream = venv / "bin" / "python", venv / "bin" / "facestream"
    # Install before the dependencies become visible, or pip would find the main venv's
    # facestream 0.1.0 and try to uninstall it.
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path, env=env)
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path, env=env).strip()
    )
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "main_venv_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))

    # 3. The installed command and the stages, from a directory outside the repository.
    images = tmp_path / "images"
    (images / SUBJECT).mkdir(parents=True)  # the folder names the subject enrolled
    enrol_photo = images / SUBJECT / "enrol.jpg"
    search_photo = images / SUBJECT / "search.jpg"
    shutil.copy(sorted((SAMPLES / "gallery" / SUBJECT).glob("*.jpg"))[0], enrol_photo)
    shutil.copy(sorted((SAMPLES / "probes" / SUBJECT).glob("*.jpg"))[0], search_photo)
    models = tmp_path / "models"
    run(facestream, "prepare-model", "--repository", models, cwd=tmp_path, env=env)
    assert (models / "sface" / "1" / "model.onnx").is_file()
    settings_file = tmp_path / "settings.toml"
    values = {
        "data_dir": tmp_path / "state",
        "model_repository": models,
        "image_roots": [images],
        "model_processes": 0,
        "workers": 2,
        "ops_port": -1,
        "crops_port": -1,
    }
    settings_file.write_text(to_toml(values))
    assert "valid" in run(facestream, "config", "check", settings_file, cwd=tmp_path, env=env)
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT)
    out = run(
        python,
        script,
        ROOT.resolve(),
        os.pathsep.join(deps),
        settings_file,
        enrol_photo,
        search_photo,
        cwd=tmp_path,
        env=env,
    )
    summary = json.loads(out.strip().splitlines()[-1])
    assert Path(summary["facestream"]).is_relative_to(site)
    assert summary["enrolled"] == ["enrolled"]
    [searched] = summary["searched"]
    assert searched["status"] == "match", summary
    assert searched["candidates"][0][:2] == [SUBJECT, 1], summary
    assert {"face.detected", "face.embedded", "match.result", "face.crop"} <= set(summary["validated"])
