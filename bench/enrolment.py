"""How often enrolment accepts a photo, and why it refuses the others: every photo of the labelled
devset (../shared/data/faces/devset, or FACESTREAM_DEVSET) submitted as an enrolment to the
detector's analysis, exactly as the detector stage runs it (decode, detect, gates, face choice).

    .venv/bin/python bench/enrolment.py [--devset DIR] [--show-refused]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from _devset import DEVSET, labelled_images

from facestream.config import Settings
from facestream.errors import RejectedEvent
from facestream.services.detector.logic import detector_for
from facestream.services.detector.stage import analyse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devset", type=Path, default=DEVSET)
    p.add_argument("--show-refused", action="store_true", help="list each refused photo with its reason")
    args = p.parse_args()
    settings = Settings()
    detector = detector_for(min(0.5, settings.det_score_threshold))
    outcomes: Counter[str] = Counter()
    faces_found: Counter[int] = Counter()
    refused = []
    items = labelled_images(args.devset)
    for path, _identity in items:
        try:
            analysis = analyse(path.read_bytes(), detector, settings, enrol=True)
        except RejectedEvent as exc:
            outcomes[exc.reason] += 1
            refused.append((path, exc.reason, str(exc)))
            continue
        faces_found[analysis.found] += 1
        outcomes["enrolled" if analysis.faces else "no_face"] += 1
    total = len(items)
    print(f"devset photos submitted as enrolments: {total}")
    for outcome, n in outcomes.most_common():
        print(f"  {outcome:24s} {n:4d}  {100 * n / total:5.1f}%")
    multi = sum(n for found, n in faces_found.items() if found > 1)
    print(f"  enrolled from a photo with more than one face detected: {multi}")
    if args.show_refused:
        for path, reason, detail in refused:
            print(f"{reason:24s} {path.relative_to(args.devset)}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
