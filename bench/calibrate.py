"""Calibrates the operating point on the devset and checks it at several gallery sizes.

1. Impostor pairs: every pair of devset photos of two different people (about 200,000). FMR(t) =
   share of them scoring >= t, measured on a grid where at least `--min-pairs` pairs remain; the
   tail beyond is the line fitted to log10 FMR over the measured scores with FMR <= 1e-3. With
   `--write`, this is saved as the calibration the matcher uses (services/matcher/operating.py).
2. Open-set runs: for each gallery size N in `--sizes`, `--splits` seeded splits enrol N identities
   with one photo each; probes are their other photos (mated) and every photo of the identities
   left out (non-mated). At the threshold the calibration gives for N and `--target`, the measured
   FPIR (share of non-mated probes with any candidate) is set beside the predicted one,
   1 - (1 - FMR(t))^N, with the FNIR (mated probes whose subject is not the rank-1 candidate).

    .venv/bin/python bench/calibrate.py [--target 0.01 --sizes 25,50,100,150 --splits 20]
                                        [--write services/matcher/calibration.json] [--mirror]

`--mirror` embeds every face as the normalised mean of its embedding and its mirror image's
(test-time augmentation), with a calibration of its own, to compare FNIR at the same FPIR.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._devset import DEVSET, embed_all, labelled_images
from facestream.services.matcher.operating import Calibration

GRID = np.round(np.arange(0.10, 0.80, 0.01), 2)


def impostor_calibration(vectors: np.ndarray, labels: list[str], min_pairs: int) -> dict[str, object]:
    names = np.array(labels)
    upper = np.triu_indices(len(vectors), 1)
    different = names[upper[0]] != names[upper[1]]
    scores = (vectors @ vectors.T)[upper][different]
    counts = np.array([(scores >= t).sum() for t in GRID])
    kept = counts >= min_pairs
    thresholds, fmr = GRID[kept], counts[kept] / len(scores)
    tail = fmr <= 1e-3
    b, a = np.polyfit(thresholds[tail], np.log10(fmr[tail]), 1)
    return {
        "model": "sface/2021dec",
        "source": f"devset impostor pairs ({len(scores):,}), bench/calibrate.py",
        "pairs": len(scores),
        "thresholds": [float(t) for t in thresholds],
        "fmr": [float(f) for f in fmr],
        "tail": {"a": float(a), "b": float(b)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--sizes", default="25,50,100,150")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--min-pairs", type=int, default=10)
    parser.add_argument("--write", type=Path, help="save the impostor calibration here")
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="embed each face as the mean with its mirror image (test-time augmentation)",
    )
    args = parser.parse_args()
    if not (DEVSET / "labels.csv").exists():
        print(f"devset not found at {DEVSET}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    vectors, labels, _ = embed_all(labelled_images(), mirror=args.mirror)
    how = " (each with its mirror image)" if args.mirror else ""
    print(f"embedded {len(labels)} faces in {time.perf_counter() - started:.1f} s{how}")
    raw = impostor_calibration(vectors, labels, args.min_pairs)
    cal = Calibration(
        str(raw["model"]),
        tuple(raw["thresholds"]),  # type: ignore[arg-type]
        tuple(raw["fmr"]),  # type: ignore[arg-type]
        (raw["tail"]["a"], raw["tail"]["b"]),  # type: ignore[index]
        str(raw["source"]),
    )
    print(f"devset: {len(labels)} images with a face; {raw['pairs']:,} impostor pairs")
    print(" threshold  FMR (measured)")
    for t, f in zip(cal.thresholds, cal.fmr, strict=True):
        if round(t * 100) % 5 == 0:
            print(f"   {t:.2f}     {f:.2e}")
    print(f"tail: log10 FMR = {cal.tail[0]:.2f} {cal.tail[1]:+.2f} t (beyond {cal.thresholds[-1]:.2f})")
    if args.write:
        args.write.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"calibration written to {args.write}")

    by_id: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_id[label].append(i)
    identities = sorted(k for k, v in by_id.items() if len(v) >= 2)
    rng = np.random.default_rng(7)
    print(f"\nopen-set runs, target FPIR {args.target}, {args.splits} splits per size")
    print("  gallery N  threshold  FPIR predicted  FPIR measured (non-mated probes)  FNIR (rank 1)")
    for size in (int(n) for n in args.sizes.split(",")):
        if size >= len(identities):
            print(f"  {size:9d}  (the devset has only {len(identities)} identities with 2 photos)")
            continue
        t = cal.threshold_for(size, args.target)
        hits = probes = misses = mated_total = 0
        for _ in range(args.splits):
            enrolled = set(rng.choice(identities, size=size, replace=False))
            gallery_idx = [by_id[i][0] for i in sorted(enrolled)]
            gallery = vectors[gallery_idx]
            gallery_labels = [labels[i] for i in gallery_idx]
            mated = [i for ident in enrolled for i in by_id[ident][1:]]
            non_mated = [i for ident in identities if ident not in enrolled for i in by_id[ident]]
            hits += int(((vectors[non_mated] @ gallery.T).max(axis=1) >= t).sum())
            probes += len(non_mated)
            sims = vectors[mated] @ gallery.T
            right = np.array([gallery_labels[k] == labels[i] for k, i in zip(sims.argmax(axis=1), mated, strict=True)])
            misses += int((~(right & (sims.max(axis=1) >= t))).sum())
            mated_total += len(mated)
        print(
            f"  {size:9d}  {t:9.3f}  {cal.fpir(t, size):14.4f}  {hits / probes:13.4f} ({hits}/{probes})"
            f"{'':10s}  {misses / mated_total:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
