"""The operating point: a threshold that keeps the false-positive identification rate (FPIR) at its
target as the gallery grows.

A search of someone not enrolled is compared with every one of the gallery's N subjects; it returns
a candidate if any comparison scores at or above the threshold t. With independent comparisons,
each a false match with probability FMR(t) (the share of impostor pairs scoring >= t),

    FPIR(t, N) = 1 - (1 - FMR(t)) ** N

so a fixed threshold's FPIR grows with N, and the threshold for a target FPIR at size N is the
smallest t with FMR(t) <= 1 - (1 - target) ** (1 / N). FMR(t) comes from a calibration measured on
impostor pairs (`bench/calibrate.py --write`: the devset's 200,000 pairs, or `facestream calibrate`
on your own labelled photos); beyond the scores where enough impostor pairs remain to measure it,
FMR falls off as the straight line fitted to log10 FMR over the measured tail (SFace's impostor
scores have an exponential tail there). Both commands check the model against open-set runs
(`open_set`): gallery and probes drawn from the labelled photos, FPIR and FNIR counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from facestream.errors import ConfigError

SHIPPED = Path(__file__).with_name("calibration.json")  # SFace 2021dec on the devset's impostor pairs
GRID = tuple(round(0.10 + 0.01 * i, 2) for i in range(70))  # thresholds 0.10 .. 0.79 where FMR is measured
TAIL_FMR = 1e-3  # the tail line is fitted over the measured points at or below this FMR


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

    def as_json(self, pairs: int) -> bytes:
        """The file `load` reads (`calibration_file`)."""
        raw = {
            "model": self.model,
            "source": self.source,
            "pairs": pairs,
            "thresholds": list(self.thresholds),
            "fmr": list(self.fmr),
            "tail": {"a": self.tail[0], "b": self.tail[1]},
        }
        return orjson.dumps(raw, option=orjson.OPT_INDENT_2) + b"\n"


def fit(impostor_scores: np.ndarray[Any, Any], model: str, source: str, min_pairs: int = 10) -> Calibration:
    """FMR measured on the grid wherever at least `min_pairs` impostor pairs still score at or above
    the threshold, and the tail fitted over the measured points with FMR <= 1e-3 (the lowest five
    measured points where too few pairs reach that far: a small set's tail is a coarser guess)."""
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64))
    grid = np.array(GRID)
    counts = len(scores) - np.searchsorted(scores, grid, side="left")
    kept = counts >= min_pairs
    thresholds, fmr = grid[kept], counts[kept] / max(len(scores), 1)
    if len(thresholds) < 5:
        raise ValueError(
            f"only {len(scores)} impostor pairs (pairs of photos of two people): FMR can be measured at "
            f"{len(thresholds)} thresholds, where {min_pairs} or more of them score at or above it, and a "
            "calibration needs 5 (label more people)"
        )
    tail = fmr <= TAIL_FMR
    if tail.sum() < 3:
        tail = np.arange(len(fmr)) >= len(fmr) - 5
    b, a = np.polyfit(thresholds[tail], np.log10(fmr[tail]), 1)
    if b >= 0:
        raise ValueError("the impostor scores' tail does not fall; these labels cannot calibrate a threshold")
    return Calibration(
        model, tuple(float(t) for t in thresholds), tuple(float(f) for f in fmr), (float(a), float(b)), source
    )


def pair_scores(vectors: np.ndarray[Any, Any], labels: list[str]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The cosine similarity of every pair of (normalised) embeddings: genuine (same label) and
    impostor (different labels)."""
    names = np.array(labels)
    upper = np.triu_indices(len(vectors), 1)
    scores = (vectors @ vectors.T)[upper]
    same = names[upper[0]] == names[upper[1]]
    return scores[same], scores[~same]


@dataclass(frozen=True)
class OpenSet:
    """Open-set searches against galleries of `size` subjects, one enrolled photo each, drawn from
    labelled photos: each non-mated search's best score (its subject not enrolled), and each mated
    search's score for its own subject where that subject ranks first (-inf where another does)."""

    size: int
    galleries: int
    non_mated: np.ndarray[Any, Any]
    mated: np.ndarray[Any, Any]

    def fpir(self, t: float) -> float:
        """Share of non-mated searches with a candidate at threshold t."""
        return float((self.non_mated >= t).mean())

    def fnir(self, t: float) -> float:
        """Share of mated searches whose subject is not the rank-1 candidate at threshold t."""
        return float((self.mated < t).mean())


def identities(labels: list[str]) -> dict[str, list[int]]:
    """Photo indexes by label, for labels with at least two photos (one to enrol, one to search)."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    return {k: v for k, v in sorted(by_label.items()) if len(v) >= 2}


def open_set(vectors: np.ndarray[Any, Any], labels: list[str], size: int, galleries: int, seed: int = 7) -> OpenSet:
    """`galleries` random galleries of `size` labels (first photo enrolled): the other photos of
    the enrolled search as mated probes, every photo of the labels left out as non-mated ones."""
    by_id = identities(labels)
    names = list(by_id)
    if not 0 < size < len(names):
        raise ValueError(f"a gallery of {size} needs more than {size} people with 2 photos; there are {len(names)}")
    rng = np.random.default_rng(seed)
    non_mated, mated = [], []
    for _ in range(galleries):
        enrolled = sorted(rng.choice(len(names), size=size, replace=False))
        gallery = vectors[[by_id[names[k]][0] for k in enrolled]]
        chosen = set(enrolled)
        out = [i for k, name in enumerate(names) if k not in chosen for i in by_id[name]]
        non_mated.append((vectors[out] @ gallery.T).max(axis=1))
        for slot, k in enumerate(enrolled):
            sims = vectors[by_id[names[k]][1:]] @ gallery.T
            mated.append(np.where(sims.argmax(axis=1) == slot, sims.max(axis=1), -np.inf))
    return OpenSet(size, galleries, np.concatenate(non_mated), np.concatenate(mated))


def load(path: Path | None = None) -> Calibration:
    """The calibration at `path` (written by `facestream calibrate` or `bench/calibrate.py
    --write`), or the shipped one."""
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
        raise ConfigError(f"calibration {path}: {exc} (write one with `facestream calibrate`)") from exc
    if len(cal.thresholds) < 2 or len(cal.thresholds) != len(cal.fmr) or list(cal.thresholds) != sorted(cal.thresholds):
        raise ConfigError(f"calibration {path}: thresholds must ascend, one FMR each")
    if cal.tail[1] >= 0:
        raise ConfigError(f"calibration {path}: the tail must fall (b < 0)")
    return cal
