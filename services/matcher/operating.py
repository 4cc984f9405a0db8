"""The operating point: a threshold that keeps the false-positive identification rate (FPIR) at its
target as the gallery grows.

A search of someone not enrolled is compared with every one of the gallery's N subjects; it returns
a candidate if any comparison scores at or above the threshold t. With independent comparisons,
each a false match with probability FMR(t) (the share of impostor pairs scoring >= t),

    FPIR(t, N) = 1 - (1 - FMR(t)) ** N

so a fixed threshold's FPIR grows with N, and the threshold for a target FPIR at size N is the
smallest t with FMR(t) <= 1 - (1 - target) ** (1 / N). FMR(t) comes from a calibration measured on
impostor pairs (`bench/calibrate.py --write`: the devset's 200,000 pairs); beyond the scores where
enough impostor pairs remain to measure it, FMR falls off as the straight line fitted to log10 FMR
over the measured tail (SFace's impostor scores have an exponential tail there). `bench/calibrate.py`
checks the model against open-set runs at several gallery sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from facestream.errors import ConfigError

SHIPPED = Path(__file__).with_name("calibration.json")  # SFace 2021dec on the devset's impostor pairs


@dataclass(frozen=True)
class Calibration:
    """FMR measured at `thresholds` (ascending), and the fitted tail log10 FMR = a + b * t."""

    model: str
    thresholds: tuple[float, ...]
    fmr: tuple[float, ...]
    tail: tuple[float, float]
    source: str

    def false_match_rate(self, t: float) -> float:
        """FMR at threshold t: measured (interpolated in log space) where measured, else the tail."""
        ts, fs = self.thresholds, self.fmr
        if t <= ts[0]:
            return fs[0]
        for (t0, f0), (t1, f1) in zip(zip(ts, fs, strict=True), zip(ts[1:], fs[1:], strict=True), strict=False):
            if t <= t1 and f1 > 0:
                share = (t - t0) / (t1 - t0)
                return 10 ** (math.log10(f0) + share * (math.log10(f1) - math.log10(f0)))
        a, b = self.tail
        return min(fs[-1], 10 ** (a + b * t))

    def fpir(self, t: float, gallery_size: int) -> float:
        """The expected FPIR of threshold t against a gallery of `gallery_size` subjects."""
        return 1.0 - (1.0 - self.false_match_rate(t)) ** max(gallery_size, 0)

    def threshold_for(self, gallery_size: int, target_fpir: float, floor: float = -1.0) -> float:
        """The lowest threshold (to 0.001, never under `floor`) whose expected FPIR at this
        gallery size is at most the target."""
        fmr_target = 1.0 - (1.0 - target_fpir) ** (1.0 / max(gallery_size, 1))
        low, high = max(floor, self.thresholds[0]), 1.0
        if self.false_match_rate(low) <= fmr_target:
            return round(low, 3)
        for _ in range(40):  # FMR falls as t rises: bisect
            mid = (low + high) / 2
            if self.false_match_rate(mid) <= fmr_target:
                high = mid
            else:
                low = mid
        return math.ceil(high * 1000) / 1000


def load(path: Path | None = None) -> Calibration:
    """The calibration at `path` (written by `bench/calibrate.py --write`), or the shipped one."""
    path = path or SHIPPED
    try:
        raw: dict[str, Any] = orjson.loads(path.read_bytes())
        cal = Calibration(
            model=str(raw["model"]),
            thresholds=tuple(float(t) for t in raw["thresholds"]),
            fmr=tuple(float(f) for f in raw["fmr"]),
            tail=(float(raw["tail"]["a"]), float(raw["tail"]["b"])),
            source=str(raw["source"]),
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"calibration {path}: {exc} (write one with bench/calibrate.py --write)") from exc
    if len(cal.thresholds) < 2 or len(cal.thresholds) != len(cal.fmr) or list(cal.thresholds) != sorted(cal.thresholds):
        raise ConfigError(f"calibration {path}: thresholds must ascend, one FMR each")
    if cal.tail[1] >= 0:
        raise ConfigError(f"calibration {path}: the tail must fall (b < 0)")
    return cal
