"""Every error facestream raises, in one hierarchy.

`RejectedEvent` and its subclasses mean "this event cannot be processed, ever": the stage sends
it to the dead-letter topic with `reason` and carries on. Anything else that escapes a stage is a
fault of the stage or its dependencies, and is also dead-lettered (stage `internal`) so nothing is
lost, but it is logged as an error.
"""

from __future__ import annotations

from typing import Any


class FacestreamError(Exception):
    """Base of all facestream errors."""


class ConfigError(FacestreamError):
    """The configuration is invalid or incomplete."""


class UsageError(FacestreamError):
    """A command given something it cannot use (a missing file, an unknown subject)."""


class ModelError(FacestreamError):
    """A model file is missing, altered, or does not have the expected inputs and outputs."""


class RejectedEvent(FacestreamError):
    """An event that cannot be processed. `reason` is a short, stable machine-readable code.
    `transient`: it might succeed later (a server away, a timeout): the worker tries again a few
    times before dead-lettering it, and `facestream dlq replay --transient` sends it again."""

    reason = "rejected"
    transient = False
    # The refused event, when the stage could read it: its dead letter carries its `submitted_at`
    # (so any API worker finds the submission it belongs to) and its audit entry names who asked.
    event: dict[str, Any] | None = None

    def __init__(self, detail: str, *, reason: str | None = None, transient: bool | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason
        if transient is not None:
            self.transient = transient


class MalformedEvent(RejectedEvent):
    """Not JSON, or JSON that does not validate against the event's contract."""

    reason = "malformed_event"


class ImageRejected(RejectedEvent):
    """The image is missing, too large, of a type we do not decode, corrupt, or altered."""

    reason = "image_rejected"


class FetchRejected(ImageRejected):
    """The image URI is not allowed (scheme, SSRF policy, path outside the store)."""

    reason = "fetch_rejected"


class FetchFailed(ImageRejected):
    """The image URI is allowed but could not be fetched (unreachable, timeout, HTTP error)."""

    reason = "fetch_failed"


class DependencyUnavailable(RejectedEvent):
    """A server the stage needs (the gallery, Triton) did not answer: tried again later."""

    reason = "dependency_unavailable"
    transient = True


class OutputRejected(RejectedEvent):
    """The broker refuses what a stage made of the event (too large, an invalid record)."""

    reason = "output_rejected"


class ModelProcessDied(RejectedEvent):
    """The event killed every model process it was given to (a crashing decoder, memory): it is
    not tried again."""

    reason = "model_process_died"


class EnrolmentRejected(RejectedEvent):
    """An enrolment that would enrol the wrong face or none."""

    reason = "enrolment_rejected"


class PurposeNotAllowed(RejectedEvent):
    """A search whose purpose a watchlist it names (or, naming none, every declared watchlist)
    does not allow (see facestream.purposes)."""

    reason = "purpose_not_allowed"


class WatchlistRefused(RejectedEvent):
    """An enrolment into a watchlist not declared, or kept longer than its watchlist allows."""

    reason = "watchlist_refused"


class UnsafeDestination(FacestreamError):
    """A URL resolves to an address the SSRF policy forbids."""
