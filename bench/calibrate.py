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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _help import Help

from bench._devset import DEVSET, embed_all, labelled_images
from facestream.services.matcher.operating import fit, identities, open_set, pair_scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
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
    _, impostor = pair_scores(vectors, labels)
    source = f"devset impostor pairs ({len(impostor):,}), bench/calibrate.py"
    cal = fit(impostor, "sface/2021dec", source, args.min_pairs)
    print(f"devset: {len(labels)} images with a face; {len(impostor):,} impostor pairs")
    print(" threshold  FMR (measured)")
    for t, f in zip(cal.thresholds, cal.fmr, strict=True):
        if round(t * 100) % 5 == 0:
            print(f"   {t:.2f}     {f:.2e}")
    print(f"tail: log10 FMR = {cal.tail[0]:.2f} {cal.tail[1]:+.2f} t (beyond {cal.thresholds[-1]:.2f})")
    if args.write:
        args.write.write_bytes(cal.as_json(len(impostor)))
        print(f"calibration written to {args.write}")

    people = len(identities(labels))
    print(f"\nopen-set runs, target FPIR {args.target}, {args.splits} splits per size")
    print("  gallery N  threshold  FPIR predicted  FPIR measured (non-mated probes)  FNIR (rank 1)")
    for size in (int(n) for n in args.sizes.split(",")):
        if size >= people:
            print(f"  {size:9d}  (the devset has only {people} identities with 2 photos)")
            continue
        t = cal.threshold_for(size, args.target)
        run = open_set(vectors, labels, size, args.splits)
        hits = int((run.non_mated >= t).sum())
        print(
            f"  {size:9d}  {t:9.3f}  {cal.fpir(t, size):14.4f}  {run.fpir(t):13.4f} ({hits}/{len(run.non_mated)})"
            f"{'':10s}  {run.fnir(t):.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
