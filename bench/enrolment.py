"""How often enrolment accepts a photo, and why it refuses the others: every photo of the labelled
devset (../shared/data/faces/devset, or FACESTREAM_DEVSET) submitted as an enrolment to the
detector's analysis, exactly as the detector stage runs it (decode, detect, gates, face choice).
For each photo with several faces it also checks that the face chosen is the labelled person's:
of all the photo's faces, the one most like that person's other photos (SFace, cosine).

    .venv/bin/python bench/enrolment.py [--devset DIR] [--show-refused]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from _devset import DEVSET, ROOT, labelled_images
from _help import Help

from facestream.config import Settings
from facestream.errors import RejectedEvent
from facestream.services.detector.logic import align, detector_for
from facestream.services.detector.stage import analyse
from facestream.services.embedder.logic import OnnxRuntimeBackend, prepared_path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=Help)
    p.add_argument("--devset", type=Path, default=DEVSET)
    p.add_argument("--show-refused", action="store_true", help="list each refused photo with its reason")
    args = p.parse_args()
    settings = Settings()
    detector = detector_for(min(0.5, settings.det_score_threshold))
    backend = OnnxRuntimeBackend(prepared_path(ROOT / "models"))
    outcomes: Counter[str] = Counter()
    refused = []
    chosen: dict[Path, np.ndarray] = {}  # the enrolled face's embedding, by photo
    several: list[tuple[Path, str, np.ndarray, int]] = []  # photos with several faces: all, and the chosen one
    items = labelled_images(args.devset)
    for path, identity in items:
        data = path.read_bytes()
        try:
            analysis = analyse(data, detector, settings, enrol=True)
        except RejectedEvent as exc:
            outcomes[exc.reason] += 1
            refused.append((path, exc.reason, str(exc)))
            continue
        if not analysis.faces:
            outcomes["no_face"] += 1
            continue
        outcomes["enrolled"] += 1
        [(face, _, crop)] = analysis.faces
        chosen[path] = backend.embed([crop])[0]
        if analysis.found > 1:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            faces = detector.detect(image)
            vectors = backend.embed([align(image, f) for f in faces])
            several.append((path, identity, vectors, [f.bbox for f in faces].index(face.bbox)))
    total = len(items)
    print(f"devset photos submitted as enrolments: {total}")
    for outcome, n in outcomes.most_common():
        print(f"  {outcome:24s} {n:4d}  {100 * n / total:5.1f}%")
    labels = dict(items)
    right = 0
    for path, identity, vectors, index in several:
        others = [v for p, v in chosen.items() if p != path and labels[p] == identity]
        if not others:
            right += 1  # nothing to compare with: counted as right, and said below
            continue
        likeness = (vectors @ np.stack(others).T).max(axis=1)
        right += int(np.argmax(likeness) == index)
    print(f"  enrolled from a photo with several faces: {len(several)}, the labelled person's face chosen in {right}")
    if args.show_refused:
        for path, reason, detail in refused:
            print(f"{reason:24s} {path.relative_to(args.devset)}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
