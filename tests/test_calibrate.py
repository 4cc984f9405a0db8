"""`facestream calibrate --labels DIR` on labelled photos (a folder per person), through the
pipeline's own detector, face choice and embedder: the verification and open-set tables, the
calibration file the matcher loads, the DET plot; and the arithmetic under it
(services/matcher/operating.py fit, pair_scores, open_set) on embeddings whose answers are known."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facestream.services.matcher import operating
from tests.conftest import ROOT, SAMPLES


def _labelled(tmp_path: Path) -> Path:
    """The committed sample photos, one folder per person (gallery and probes together)."""
    root = tmp_path / "labels"
    for photo in sorted(SAMPLES.glob("*/*/*.jpg")):
        (root / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, root / photo.parent.name / photo.name)
    return root


def _calibrate(tmp_path: Path, *args: str, models: Path = ROOT / "models") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "facestream.services", "calibrate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**env, "FACESTREAM_DATA_DIR": str(tmp_path / "state"), "FACESTREAM_MODEL_REPOSITORY": str(models)},
    )


def test_calibrate_measures_labelled_photos_and_writes_what_the_matcher_loads(tmp_path: Path) -> None:
    labels = _labelled(tmp_path)
    people = len(list(labels.iterdir()))
    photos = len(list(labels.glob("*/*")))
    broken = labels / "azure_family1_dad" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a photo")
    (labels / "azure_family1_dad" / "notes.txt").write_text("not a photo either, and not one by its name")
    result = _calibrate(tmp_path, "--labels", str(labels), "--target", "0.01")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{photos} photos of {people} people embedded; left out: {{'undecodable': 1}}" in out
    assert f"left out {broken}: undecodable" in out  # named, so it can be fixed
    assert "(fitted tail)" in out  # 16 photos measure FMR only so far; the rest is marked as fitted
    assert re.search(r"verification\s+threshold\s+FMR\s+FNMR", out)
    assert re.search(r"open set: 20 galleries of \d+ people, \d+ mated and \d+ non-mated searches", out)
    # The calibration lands in data_dir, and the matcher reads it back: the threshold it gives for
    # a gallery of 1,000 is the one printed.
    written = tmp_path / "state" / "calibration" / "calibration.json"
    cal = operating.load(written)
    printed = re.search(r"\n\s+1,000\s+(\d\.\d{3})\n", out)
    assert printed is not None, out
    assert cal.threshold_for(1_000, 0.01) == float(printed.group(1))
    assert cal.threshold_for(100_000, 0.01) > cal.threshold_for(1_000, 0.01)
    with Image.open(tmp_path / "state" / "calibration" / "det.png") as plot:
        assert plot.format == "PNG"
        assert plot.width > 2 * 500  # both panels: verification and open set


def test_calibrate_says_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    two = tmp_path / "two"
    for person in ("azure_family1_dad", "azure_family1_mom"):
        shutil.copytree(SAMPLES / "probes" / person, two / person)
    missing = _calibrate(tmp_path, "--labels", str(two), models=tmp_path / "elsewhere")
    assert missing.returncode == 2
    assert "sface/1/model.onnx is missing: prepare it with `facestream prepare-model`" in missing.stderr
    for args, message in (
        (["--labels", str(tmp_path / "missing")], "is not a folder"),
        (["--labels", str(tmp_path / "empty")], "no photos in"),
        (["--labels", str(two), "--no-plot"], "needs at least 5 people"),
        (["--labels", str(two), "--target", "2"], "a share between 0 and 1"),
        (["--labels", str(two), "--galleries", "0"], "at least 1"),
        (["--labels", str(two), "--out", str(SAMPLES / "SOURCES.md")], "is a file"),
    ):
        result = _calibrate(tmp_path, *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def _clusters(people: int, photos: int, spread: float, seed: int = 1) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, 128))
    vectors = np.repeat(centres, photos, axis=0) + spread * rng.normal(size=(people * photos, 128))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [f"p{i}" for i in range(people) for _ in range(photos)]


def test_pairs_and_open_set_counts_on_known_embeddings() -> None:
    vectors, labels = _clusters(people=30, photos=3, spread=0.3)
    genuine, impostor = operating.pair_scores(vectors, labels)
    assert len(genuine) == 30 * 3
    assert len(impostor) == 90 * 89 // 2 - 90
    assert genuine.min() > 0.7
    assert impostor.max() < 0.5
    run = operating.open_set(vectors, labels, size=10, galleries=5)
    assert len(run.mated) == 5 * 10 * 2
    assert len(run.non_mated) == 5 * 20 * 3
    assert run.fpir(0.6) == 0.0
    assert run.fnir(0.6) == 0.0
    assert run.fpir(-1.0) == 1.0  # every search returns someone at no threshold at all
    # A photo of p1 labelled p0: searched as p0, it ranks someone else first at any threshold.
    swapped = list(labels)
    swapped[3] = "p0"
    run = operating.open_set(vectors, swapped, size=29, galleries=1)
    assert run.fnir(-1.0) > 0
    with pytest.raises(ValueError, match="needs more than 30"):
        operating.open_set(vectors, labels, size=30, galleries=1)


def test_fit_recovers_an_exponential_tail_and_refuses_too_few_pairs() -> None:
    rng = np.random.default_rng(5)
    # Impostor scores whose upper tail falls as log10 P(s >= t) = -20 (t - 0.2) beyond 0.2.
    scores = np.concatenate([rng.uniform(-0.2, 0.2, 900_000), 0.2 + rng.exponential(np.log10(np.e) / 20, 100_000)])
    cal = operating.fit(scores, "test", "synthetic", min_pairs=10)
    assert cal.tail[1] == pytest.approx(-20, rel=0.1)
    assert 1e-7 / 3 < cal.false_match_rate(0.5) < 1e-7 * 3  # 0.1 * 10 ** (-20 * 0.3), extrapolated
    with pytest.raises(ValueError, match="label more people"):
        operating.fit(scores[:30], "test", "synthetic", min_pairs=10)
