"""Matching decisions: candidates per subject above the threshold, ranked; and which enrolments
have outlived their retention terms."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from facestream.contracts.consent import retention_ends
from facestream.services.matcher.gallery import Hit


@dataclass(frozen=True)
class Candidate:
    subject_id: str
    watchlist: str
    score: float
    rank: int


def candidates(hits: list[Hit], threshold: float, top_k: int) -> list[Candidate]:
    """One candidate per subject (its best-scoring enrolment), at or above `threshold`,
    best first, at most `top_k`."""
    best: dict[str, Hit] = {}
    for hit in hits:
        if hit.score >= threshold and (hit.subject_id not in best or hit.score > best[hit.subject_id].score):
            best[hit.subject_id] = hit
    ordered = sorted(best.values(), key=lambda h: h.score, reverse=True)[:top_k]
    return [Candidate(h.subject_id, h.watchlist, round(h.score, 4), rank) for rank, h in enumerate(ordered, 1)]


def retention_due(terms: dict[str, tuple[str, str]], now: dt.datetime) -> tuple[dict[str, str], list[str], list[str]]:
    """What the retention sweeper removes, from every point's (subject, retain_until):
    - the subjects all of whose terms have passed (to be erased: keys destroyed, receipt), each
      with its latest term;
    - the points whose own term has passed while another of their subject's runs on (removed);
    - points whose term cannot be read (never written by this matcher): named, left alone."""
    ends: dict[str, list[tuple[str, dt.datetime]]] = {}
    unreadable = []
    for point_id, (subject, retain_until) in terms.items():
        try:
            end = retention_ends(retain_until)
        except ValueError:
            unreadable.append(point_id)
            continue
        ends.setdefault(subject, []).append((point_id, end))
    subjects: dict[str, str] = {}
    points: list[str] = []
    for subject, held in ends.items():
        latest = max(end for _, end in held)
        if latest <= now:
            subjects[subject] = latest.isoformat().replace("+00:00", "Z")
        else:
            points += [point_id for point_id, end in held if end <= now]
    return subjects, sorted(points), sorted(unreadable)
