"""Human review of candidates: the two-person rule, as one pure fold over decisions.

A match's candidates are leads until reviewed. Decisions (`review.decision`, contracts/) are
appended to the `reviews` topic, keyed by the match, so a match's decisions have one order. In
that order: a confirmation counts once per reviewer; two confirmations by different reviewers
confirm the candidate; a rejection by any reviewer rejects it; once confirmed or rejected, later
decisions change nothing. Every reader (the review service's board, the notifier's reviewed
webhooks) folds with `apply`, so all of them agree, also when two reviewers decide at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TOPIC = "reviews"  # short topic name (owned by services/review)
CONFIRMATIONS = 2
STATUSES = ("pending", "confirming", "confirmed", "rejected")


@dataclass
class CandidateReview:
    """One candidate's review: who confirmed, who rejected."""

    confirmed_by: list[str] = field(default_factory=list)
    rejected_by: str | None = None

    @property
    def status(self) -> str:
        if self.rejected_by is not None:
            return "rejected"
        if len(self.confirmed_by) >= CONFIRMATIONS:
            return "confirmed"
        return "confirming" if self.confirmed_by else "pending"

    @property
    def final(self) -> bool:
        return self.status in ("confirmed", "rejected")

    def refusal(self, reviewer: str) -> str | None:
        """Why `reviewer` may not decide on this candidate now; None if they may."""
        if self.final:
            return f"already {self.status}"
        if reviewer in self.confirmed_by:
            return "already confirmed by this reviewer: a second confirmation must come from someone else"
        return None

    def apply(self, decision: dict[str, Any]) -> bool:
        """Apply one decision (in topic order); whether it counted."""
        if self.refusal(decision["reviewer"]) is not None:
            return False
        if decision["decision"] == "reject":
            self.rejected_by = decision["reviewer"]
        else:
            self.confirmed_by.append(decision["reviewer"])
        return True

    def describe(self) -> dict[str, Any]:
        return {"status": self.status, "confirmed_by": list(self.confirmed_by), "rejected_by": self.rejected_by}


class Ledger:
    """The review state of every candidate whose decisions it was given, in topic order."""

    def __init__(self) -> None:
        self.candidates: dict[tuple[str, str], CandidateReview] = {}
        self.counted: dict[str, bool] = {}  # decision event id -> whether it counted

    def of(self, match_event_id: str, subject_id: str) -> CandidateReview:
        return self.candidates.get((match_event_id, subject_id)) or CandidateReview()

    def apply(self, decision: dict[str, Any]) -> tuple[bool, CandidateReview]:
        """Apply `decision` unless applied already (a redelivery); whether it counted, and the
        candidate's review after it."""
        key = (decision["match_event_id"], decision["subject_id"])
        review = self.candidates.setdefault(key, CandidateReview())
        if decision["event_id"] not in self.counted:
            self.counted[decision["event_id"]] = review.apply(decision)
        return self.counted[decision["event_id"]], review
