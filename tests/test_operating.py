"""The operating point follows the gallery: the threshold for a target false-positive
identification rate rises with the gallery's size, from the model's impostor calibration
(services/matcher/operating.py; the figures against measured open-set runs: bench/calibrate.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.services.matcher import operating
from facestream.services.matcher.stage import MatcherStage


def test_the_threshold_rises_with_the_gallery_and_holds_the_target() -> None:
    cal = operating.load()
    thresholds = [cal.threshold_for(n, 0.01) for n in (10, 100, 1_000, 10_000, 100_000)]
    assert thresholds == sorted(thresholds)
    assert len(set(thresholds)) == 5
    for n, t in zip((10, 100, 1_000, 10_000, 100_000), thresholds, strict=True):
        assert cal.fpir(t, n) <= 0.01  # at the threshold chosen for n, the target holds
        assert cal.fpir(t - 0.002, n) > 0.01 * 0.9  # and it is not needlessly high
    # A fixed threshold's false-positive identification rate grows with the gallery.
    assert cal.fpir(0.44, 400) > 3 * cal.fpir(0.44, 100) > 3 * cal.fpir(0.44, 25)
    # Beyond the measured scores, the fitted tail carries on falling.
    assert cal.false_match_rate(0.6) < cal.false_match_rate(0.5) < cal.fmr[-1]


def test_a_broken_calibration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="facestream calibrate"):
        operating.load(tmp_path / "missing.json")
    raw = orjson.loads(operating.SHIPPED.read_bytes())
    rising = tmp_path / "rising.json"
    rising.write_bytes(orjson.dumps({**raw, "tail": {"a": 0.0, "b": 1.0}}))
    with pytest.raises(ConfigError, match="must fall"):
        operating.load(rising)


def test_match_events_carry_the_threshold_for_their_gallery_size(tmp_path: Path) -> None:
    follows = MatcherStage(Settings(data_dir=tmp_path))
    small, small_point = follows.operating_point(20)
    large, _large_point = follows.operating_point(2_000)
    assert small < large
    assert small_point["gallery_size"] == 20
    assert small_point["threshold_follows_gallery"] is True
    assert small_point["false_positive_identification_rate"] <= 0.01
    fixed = MatcherStage(Settings(data_dir=tmp_path, threshold=0.44))
    assert fixed.operating_point(20)[0] == fixed.operating_point(2_000)[0] == 0.44
    _, point = fixed.operating_point(2_000)
    assert point["threshold_follows_gallery"] is False
    assert point["false_positive_identification_rate"] > 0.1  # said plainly: at 2,000 it is no longer 1%
