"""Calibrates the open-set search threshold on the devset and prints its operating point.

Protocol: identities with at least 2 photos; in each of `--splits` seeded splits, `--gallery`
identities are enrolled with one photo each; probes are their other photos (mated) and every
photo of the identities left out (non-mated). FPIR(t) = share of non-mated probes whose best
gallery score is >= t; FNIR(t) = share of mated probes whose true subject is not at rank 1
with score >= t. The threshold chosen is the smallest t with FPIR <= --target in every split.

    .venv/bin/python bench/calibrate.py [--gallery 100 --splits 20 --target 0.01]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._devset import DEVSET, embed_all, labelled_images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=100)
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--target", type=float, default=0.01)
    args = parser.parse_args()
    if not (DEVSET / "labels.csv").exists():
        print(f"devset not found at {DEVSET}", file=sys.stderr)
        return 2
    vectors, labels, _ = embed_all(labelled_images())
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_id[label].append(i)
    identities = sorted(k for k, v in by_id.items() if len(v) >= 2)
    print(f"devset: {len(labels)} images with a face, {len(identities)} identities with >= 2 photos")
    rng = np.random.default_rng(7)
    grid = np.round(np.arange(0.30, 0.75, 0.01), 2)
    fpir = np.zeros((args.splits, len(grid)))
    fnir = np.zeros((args.splits, len(grid)))
    for s in range(args.splits):
        enrolled = set(rng.choice(identities, size=args.gallery, replace=False))
        gallery_idx = [by_id[i][0] for i in sorted(enrolled)]
        gallery = vectors[gallery_idx]
        gallery_labels = [labels[i] for i in gallery_idx]
        mated = [i for ident in enrolled for i in by_id[ident][1:]]
        non_mated = [i for ident in identities if ident not in enrolled for i in by_id[ident]]
        scores_nm = (vectors[non_mated] @ gallery.T).max(axis=1)
        sims_m = vectors[mated] @ gallery.T
        top = sims_m.argmax(axis=1)
        top_score = sims_m.max(axis=1)
        correct = np.array([gallery_labels[t] == labels[i] for t, i in zip(top, mated, strict=True)])
        for j, t in enumerate(grid):
            fpir[s, j] = (scores_nm >= t).mean()
            fnir[s, j] = 1 - (correct & (top_score >= t)).mean()
    print(
        f"gallery {args.gallery} subjects, {args.splits} splits, "
        f"non-mated probes per split ~{len(non_mated)}, mated ~{len(mated)}"
    )
    print(" threshold  FPIR mean  FPIR max  FNIR mean (rank 1)")
    chosen = None
    for j, t in enumerate(grid):
        if chosen is None and fpir[:, j].max() <= args.target:
            chosen = j
        if 0.30 <= t <= 0.70 and (j % 2 == 0 or j == chosen):
            mark = "  <= chosen" if j == chosen else ""
            print(f"   {t:.2f}     {fpir[:, j].mean():.4f}    {fpir[:, j].max():.4f}    {fnir[:, j].mean():.4f}{mark}")
    if chosen is None:
        print("no threshold in range meets the target")
        return 1
    print(
        f"chosen threshold {grid[chosen]:.2f}: FPIR mean {fpir[:, chosen].mean():.4f} max {fpir[:, chosen].max():.4f},"
        f" rank-1 identification rate {1 - fnir[:, chosen].mean():.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
