"""Matching decisions: candidates per subject above the threshold, ranked."""

from __future__ import annotations

from dataclasses import dataclass

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
