"""`facestream calibrate --labels DIR`: the operating point measured on your own labelled photos.

DIR holds a folder per person (DIR/<person>/<photo>, as the demo's gallery). Every photo goes
through the pipeline's own path: decoded and gated as the detector does, the subject's face chosen
as enrolment chooses it, embedded with the configured model. Then every pair of photos is scored:

- verification: FMR(t), the share of impostor pairs (two people) scoring >= t, and FNMR(t), the
  share of genuine pairs (one person) scoring below it;
- the calibration: FMR(t) with its fitted tail (services/matcher/operating.py), from which the
  threshold for the target FPIR at any gallery size follows;
- open-set identification: galleries of N people (one photo enrolled each) searched with the other
  photos of the enrolled (mated) and every photo of the rest (non-mated); at the calibrated
  threshold, FPIR as measured beside the prediction, and FNIR;
- a DET plot (PNG; needs matplotlib, `pip install 'facestream[plot]'`): FNMR against FMR, and
  FNIR against FPIR at N, with the operating point marked.
"""

# It composes the detector's, the embedder's and the matcher's logic, so it sits beside main.py,
# above the services, and no service imports it.

from __future__ import annotations

import argparse
import importlib.util
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facestream.cli import IMAGE_SUFFIXES
from facestream.config import Settings, load_settings
from facestream.errors import RejectedEvent, UsageError
from facestream.models import SFACE
from facestream.services.detector.logic import detector_for
from facestream.services.detector.stage import analyse
from facestream.services.embedder.logic import load_backend, prepared_path
from facestream.services.matcher.operating import Calibration, OpenSet, fit, identities, open_set, pair_scores

GALLERY_SIZES = (100, 1_000, 10_000, 100_000, 1_000_000)  # how the threshold follows the gallery
OPEN_SET_MIN = 2  # people in an open-set gallery, and left out of it
MIN_PEOPLE = 5  # fewer, and the impostor pairs cannot say where FMR goes (a calibration of nothing)


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray[Any, Any]
    labels: list[str]
    refused: Counter[str]  # photos left out, by reason
    left_out: list[tuple[Path, str]]  # and which


def labelled_photos(root: Path) -> list[tuple[Path, str]]:
    """(photo, person) for every photo in DIR/<person>/."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder (it should hold a folder of photos per person)")
    found = [
        (photo, person.name)
        for person in sorted(p for p in root.iterdir() if p.is_dir())
        for photo in sorted(person.iterdir())
        if photo.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not found:
        raise UsageError(f"no photos in {root}/<person>/ (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def embed_photos(photos: list[tuple[Path, str]], settings: Settings) -> Embedded:
    """One embedding per photo, through the pipeline's detector and embedder logic; photos the
    pipeline would refuse to enrol are counted by reason and left out."""
    detector = detector_for(min(0.5, settings.det_score_threshold))
    backend = load_backend(prepared_path(settings.model_repository), settings.embedder_runtime)
    vectors, labels, refused, left_out = [], [], Counter[str](), []
    for path, person in photos:
        try:
            analysis = analyse(path.read_bytes(), detector, settings, enrol=True)
        except RejectedEvent as exc:
            refused[exc.reason] += 1
            left_out.append((path, f"{exc.reason}: {exc}"))
            continue
        if not analysis.faces:
            refused["no_face"] += 1
            left_out.append((path, "no_face"))
            continue
        [(_, _, crop)] = analysis.faces
        vectors.append(backend.embed([crop])[0])
        labels.append(person)
    people = len(set(labels))
    if people < MIN_PEOPLE:
        raise UsageError(
            f"photos of {people} people gave a face; a calibration needs at least {MIN_PEOPLE} people "
            "(impostor pairs come from pairs of people; 50 or more measure FMR down to about 1e-3)"
        )
    return Embedded(np.stack(vectors), labels, refused, left_out)


def _rate(share: float, total: int) -> str:
    return f"{share:.4f} ({round(share * total)}/{total})"


def report(
    embedded: Embedded,
    cal: Calibration,
    run: OpenSet | None,
    target: float,
    genuine: np.ndarray[Any, Any],
    impostors: int,
) -> list[str]:
    """The printed tables."""
    people = len(set(embedded.labels))
    lines = [
        f"{len(embedded.labels)} photos of {people} people embedded"
        + (f"; left out: {dict(embedded.refused)}" if embedded.refused else ""),
    ]
    lines += [f"  left out {path}: {why}" for path, why in embedded.left_out[:10]]
    if len(embedded.left_out) > 10:
        lines.append(f"  and {len(embedded.left_out) - 10} more")
    lines += [
        f"{len(genuine):,} genuine pairs, {impostors:,} impostor pairs",
        "",
        "verification  threshold      FMR        FNMR",
    ]
    for t in (0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60):
        fnmr = float((genuine < t).mean()) if len(genuine) else float("nan")
        fitted = "  (fitted tail)" if t > cal.thresholds[-1] else ""
        lines.append(f"              {t:9.2f}  {cal.false_match_rate(t):9.2e}  {fnmr:9.4f}{fitted}")
    lines += [
        f"FMR measured down to {cal.fmr[-1]:.1e} (t = {cal.thresholds[-1]:.2f}); beyond, the fitted tail "
        f"log10 FMR = {cal.tail[0]:.2f} {cal.tail[1]:+.2f} t (an extrapolation: more people, further measured)",
        "",
        f"threshold for FPIR {target} as the gallery grows (1 - (1 - FMR(t))^N)",
        "    gallery N  threshold",
    ]
    lines += [f"  {n:11,d}  {cal.threshold_for(n, target):9.3f}" for n in GALLERY_SIZES]
    if run is None:
        lines += [
            "",
            f"open set: not run (a gallery of {OPEN_SET_MIN} or more people, and as many left out, is needed)",
        ]
        return lines
    t = cal.threshold_for(run.size, target)
    lines += [
        "",
        f"open set: {run.galleries} galleries of {run.size} people, {len(run.mated)} mated and "
        f"{len(run.non_mated)} non-mated searches",
        f"  threshold {t:.3f}: FPIR predicted {cal.fpir(t, run.size):.4f}, measured "
        f"{_rate(run.fpir(t), len(run.non_mated))}; FNIR {_rate(run.fnir(t), len(run.mated))}",
    ]
    return lines


def det_plot(
    path: Path,
    cal: Calibration,
    genuine: np.ndarray[Any, Any],
    impostor: np.ndarray[Any, Any],
    run: OpenSet | None,
    target: float,
) -> None:
    """Verification: FNMR against FMR as measured, the fitted tail beyond, and the thresholds a
    growing gallery gets. Open set: FNIR against FPIR at the run's gallery size, with the
    calibrated threshold marked. Log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if run is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), squeeze=False)
    ax = axes[0][0]
    measured = np.linspace(-0.2, cal.thresholds[-1], 400)
    ordered = np.sort(impostor)
    fmr = (len(ordered) - np.searchsorted(ordered, measured)) / len(ordered)
    ax.plot(fmr, [(genuine < t).mean() for t in measured], label=f"measured ({len(impostor):,} impostor pairs)")
    beyond = np.linspace(cal.thresholds[-1], 0.9, 200)
    ax.plot(
        [cal.false_match_rate(t) for t in beyond],
        [(genuine < t).mean() for t in beyond],
        "--",
        label="FMR from the fitted tail",
    )
    for n in (100, 10_000, 1_000_000):
        t = cal.threshold_for(n, target)
        ax.plot([cal.false_match_rate(t)], [(genuine < t).mean()], "o", label=f"threshold {t:.3f} at N = {n:,}")
    ax.set(xscale="log", yscale="log", xlabel="FMR (impostor pairs)", ylabel="FNMR (genuine pairs)")
    ax.set_title(f"Verification DET; thresholds for FPIR {target}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    if run is not None:
        ax = axes[0][1]
        thresholds = np.linspace(-0.2, 1.0, 601)
        ax.plot([run.fpir(t) for t in thresholds], [run.fnir(t) for t in thresholds], label=f"measured, N = {run.size}")
        t = cal.threshold_for(run.size, target)
        floor = 0.5 / len(run.non_mated)  # a log axis has no 0: "none of them" is drawn here
        fpir = run.fpir(t)
        shown = f"threshold {t:.3f} (target FPIR {target})" + (
            "; measured FPIR 0, drawn at the axis" if fpir == 0 else ""
        )
        ax.plot([max(fpir, floor)], [run.fnir(t)], "o", label=shown)
        ax.axvline(target, linestyle=":", color="grey")
        ax.set(xscale="log", yscale="log", xlabel="FPIR (non-mated searches)", ylabel="FNIR (mated searches)")
        ax.set_title(f"Open-set identification DET, gallery of {run.size}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    target = args.target if args.target is not None else settings.threshold_fpir
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("the DET plot needs matplotlib: pip install 'facestream[plot]' (or pass --no-plot)")
    if not 0 < target < 1:
        raise UsageError(f"target FPIR {target}: a share between 0 and 1 (0.01 is 1%)")
    out = args.out or settings.data_dir / "calibration"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; it should name a folder for calibration.json and det.png")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    embedded = embed_photos(labelled_photos(args.labels), settings)
    genuine, impostor = pair_scores(embedded.vectors, embedded.labels)
    source = f"{args.labels} impostor pairs ({len(impostor):,}), facestream calibrate"
    try:
        cal = fit(impostor, f"{SFACE.name}/{SFACE.version}", source, args.min_pairs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if cal.threshold_for(1_000, target) >= 0.99:
        raise UsageError(
            f"these {len(impostor):,} impostor pairs put the threshold for FPIR {target} at 1,000 people at "
            f"{cal.threshold_for(1_000, target):.3f}: no score separates anyone there (label more people)"
        )
    people = len(identities(embedded.labels))
    size = args.gallery_size or people // 2
    if args.gallery_size and not OPEN_SET_MIN <= size <= people - OPEN_SET_MIN:
        raise UsageError(
            f"--gallery-size {size}: {people} people have 2 or more photos; a gallery of {OPEN_SET_MIN} to "
            f"{people - OPEN_SET_MIN} of them leaves people out to search as non-mated"
        )
    ok = OPEN_SET_MIN <= size <= people - OPEN_SET_MIN
    run = open_set(embedded.vectors, embedded.labels, size, args.galleries) if ok else None
    # The files first: a reader that goes away (`| head`) must not cost them.
    written = out / "calibration.json"
    written.write_bytes(cal.as_json(len(impostor)))
    plot = out / "det.png"
    if not args.no_plot:
        det_plot(plot, cal, genuine, impostor, run, target)
    print("\n".join(report(embedded, cal, run, target, genuine, len(impostor))))
    print(f"\ncalibration: {written} (to use it: calibration_file = {str(written.resolve())!r} in the settings)")
    if not args.no_plot:
        print(f"DET plot: {plot}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _at_least(low: int) -> Any:
    def parse(value: str) -> int:
        number = int(value)
        if number < low:
            raise argparse.ArgumentTypeError(f"{value}: at least {low}")
        return number

    return parse


def add_parser(sub: Any) -> None:
    """`facestream calibrate`."""
    c = sub.add_parser(
        "calibrate",
        help="FMR/FNMR, open-set FPIR/FNIR, a DET plot and the threshold, from your own labelled photos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--labels", type=Path, required=True, help="DIR/<person>/<photo>, 5 people or more")
    c.add_argument("--out", type=Path, help="where calibration.json and det.png go (default: data_dir/calibration)")
    c.add_argument("--target", type=float, help="target FPIR, e.g. 0.01 (default: the threshold_fpir setting)")
    c.add_argument("--gallery-size", type=int, help="open-set gallery size (default: half the people)")
    c.add_argument(
        "--galleries", type=_at_least(1), default=20, help="random galleries for the open-set run (default: 20)"
    )
    c.add_argument(
        "--min-pairs",
        type=_at_least(1),
        default=10,
        help="fewest impostor pairs scoring above a threshold for its FMR to count as measured (default: 10)",
    )
    c.add_argument("--no-plot", action="store_true", help="skip the DET plot (no matplotlib needed)")
    c.set_defaults(func=_cmd_calibrate)
