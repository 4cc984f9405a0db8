"""The transparency report: what facestream was used for in a period, from the audit chain (and,
for dead letters of every kind, the dead-letter topic while it keeps them).

Counts only, never an identity of a person searched for: searches by purpose, searches that
returned candidates, candidates reviewed (confirmed, rejected, still open), erasures by reason,
enrolment refusals by reason, dead letters by stage. The HTML version draws each as a bar chart
(inline SVG: the file is complete on its own, nothing is fetched when it is opened).
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from facestream.config import Settings
from facestream.contracts.timeutil import iso_of, parse_iso
from facestream.io.kafka import read_topic
from facestream.review import Ledger
from facestream.services.audit import log


@dataclass
class Report:
    since: datetime
    until: datetime
    searches_by_purpose: Counter[str] = field(default_factory=Counter)
    searches: int = 0
    searches_with_candidates: int = 0
    candidates: int = 0
    reviews: Counter[str] = field(default_factory=Counter)  # confirmed, rejected, open
    erasures_by_reason: Counter[str] = field(default_factory=Counter)
    enrolments: int = 0
    enrolment_refusals_by_reason: Counter[str] = field(default_factory=Counter)
    search_refusals_by_reason: Counter[str] = field(default_factory=Counter)
    dead_letters_by_stage: Counter[str] = field(default_factory=Counter)
    dead_letters_held_since: str | None = None  # the oldest dead letter the topic still keeps

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": iso_of(self.since),
            "to": iso_of(self.until),
            "searches": self.searches,
            "searches_by_purpose": dict(self.searches_by_purpose.most_common()),
            "searches_with_candidates": self.searches_with_candidates,
            "candidates": self.candidates,
            "reviews": {k: self.reviews.get(k, 0) for k in ("confirmed", "rejected", "open")},
            "erasures_by_reason": dict(self.erasures_by_reason.most_common()),
            "enrolments": self.enrolments,
            "enrolment_refusals_by_reason": dict(self.enrolment_refusals_by_reason.most_common()),
            "search_refusals_by_reason": dict(self.search_refusals_by_reason.most_common()),
            "dead_letters_by_stage": dict(self.dead_letters_by_stage.most_common()),
            "dead_letters_held_since": self.dead_letters_held_since,
        }


def tally(entries: list[dict[str, Any]], letters: list[dict[str, Any]], since: datetime, until: datetime) -> Report:
    """The report over `entries` (audit entries, chain order) and `letters` (dead letters) that
    occurred in [since, until). Reviews are counted for the candidates of the period's searches,
    with every decision made on them so far."""
    report = Report(since, until)
    ledger = Ledger()
    matches: dict[str, int] = {}  # match event id -> candidates, searches in the period
    for entry in entries:
        details, refs = entry["details"], entry["refs"]
        if entry["action"] == "review_decision":  # decided later than the search, maybe: all count
            decision = {
                "event_id": entry["entry_id"],
                "match_event_id": refs["match_event_id"],
                "subject_id": refs["subject_id"],
                "reviewer": entry["actor"],
                "decision": details["decision"],
            }
            ledger.apply(decision)
            continue
        if not since <= parse_iso(entry["occurred_at"]) < until:
            continue
        action = entry["action"]
        if action == "search":
            report.searches += 1
            report.searches_by_purpose[str(details.get("purpose", "?"))] += 1
            found = int(details.get("candidates", 0))
            report.candidates += found
            if found:
                report.searches_with_candidates += 1
                matches[refs["match_event_id"]] = found
        elif action == "enrolment":
            report.enrolments += 1
        elif action == "erasure":
            report.erasures_by_reason[str(details.get("reason", "?"))] += 1
        elif action == "refusal":
            reason = str(details.get("reason", "?"))
            if details.get("kind") == "search":
                report.search_refusals_by_reason[reason] += 1
            elif details.get("kind") == "enroll":
                report.enrolment_refusals_by_reason[reason] += 1
    for (match, _), review in ledger.candidates.items():
        if match in matches and review.final:
            report.reviews[review.status] += 1
    settled = sum(report.reviews.values())
    report.reviews["open"] = max(0, sum(matches.values()) - settled)
    held = [parse_iso(x["occurred_at"]) for x in letters]
    report.dead_letters_held_since = iso_of(min(held)) if held else None
    for letter in letters:
        if since <= parse_iso(letter["occurred_at"]) < until:
            report.dead_letters_by_stage[letter["stage"]] += 1
    return report


async def build(settings: Settings, since: datetime, until: datetime) -> Report:
    entries = [r["entry"] for r in await log.records(settings)]
    letters = [orjson.loads(r.value) for r in await read_topic(settings, settings.topic("dlq")) if r.value]
    return tally(entries, [x for x in letters if x.get("event_type") == "dead.letter"], since, until)


def text(report: Report) -> str:
    data = report.as_dict()
    lines = [f"facestream transparency report, {data['from']} to {data['to']}", ""]
    lines.append(f"searches                 {report.searches}")
    lines += [f"  purpose {p!r:40s} {n}" for p, n in data["searches_by_purpose"].items()]
    lines.append(f"searches with candidates {report.searches_with_candidates} ({report.candidates} candidates)")
    lines.append("reviews of those         " + ", ".join(f"{k} {v}" for k, v in data["reviews"].items()))
    lines.append(f"enrolments               {report.enrolments}")
    for title, key in (
        ("enrolment refusals", "enrolment_refusals_by_reason"),
        ("search refusals", "search_refusals_by_reason"),
        ("erasures", "erasures_by_reason"),
        ("dead letters", "dead_letters_by_stage"),
    ):
        lines.append(f"{title:24s} {sum(data[key].values())}")
        lines += [f"  {k:38s} {v}" for k, v in data[key].items()]
    if report.dead_letters_held_since:
        lines.append(f"(dead letters are kept 30 days: the topic holds them since {report.dead_letters_held_since})")
    return "\n".join(lines)


def _chart(chart_id: str, title: str, counts: dict[str, int]) -> str:
    """A horizontal bar chart as inline SVG, one labelled bar per item."""
    width, bar, gap, label_w = 640, 22, 8, 260
    rows = list(counts.items()) or [("none", 0)]
    top = max(counts.values(), default=0) or 1
    height = len(rows) * (bar + gap) + gap
    parts = [
        f'<figure id="{chart_id}"><figcaption>{html.escape(title)}</figcaption>',
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
    ]
    for i, (name, value) in enumerate(rows):
        y = gap + i * (bar + gap)
        length = round((width - label_w - 60) * value / top)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar - 6}" text-anchor="end">{html.escape(str(name))[:60]}</text>'
            f'<rect class="bar" data-label="{html.escape(str(name))}" data-value="{value}" x="{label_w}" y="{y}" '
            f'width="{length}" height="{bar}"></rect>'
            f'<text x="{label_w + length + 6}" y="{y + bar - 6}">{value}</text>'
        )
    parts.append("</svg></figure>")
    return "".join(parts)


def to_html(report: Report) -> str:
    data = report.as_dict()
    charts = [
        _chart("searches-by-purpose", "Searches by purpose", data["searches_by_purpose"]),
        _chart(
            "outcomes",
            "Searches and their candidates",
            {"searches": report.searches, "with candidates": report.searches_with_candidates},
        ),
        _chart("reviews", "Reviews of the candidates", data["reviews"]),
        _chart("erasures", "Erasures by reason", data["erasures_by_reason"]),
        _chart("enrolment-refusals", "Enrolment refusals by reason", data["enrolment_refusals_by_reason"]),
        _chart("search-refusals", "Search refusals by reason", data["search_refusals_by_reason"]),
        _chart("dead-letters", "Dead letters by stage", data["dead_letters_by_stage"]),
    ]
    since = report.dead_letters_held_since
    held = (
        f"<p class=note>Dead letters are kept 30 days: the topic holds them since {html.escape(since)}.</p>"
        if since
        else ""
    )
    embedded = orjson.dumps(data).decode().replace("<", "\\u003c")  # nothing in it can close the script
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>facestream transparency report {html.escape(data['from'])} to {html.escape(data['to'])}</title>"
        "<style>body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430}"
        "figure{margin:18px 0}figcaption{font-weight:600;margin-bottom:4px}"
        "rect.bar{fill:#3b6ea5}.note{color:#5b6472}svg text{font-size:12px}</style></head><body>"
        f"<h1>facestream transparency report</h1><p>{html.escape(data['from'])} to {html.escape(data['to'])}: "
        f"{report.searches} searches, {report.enrolments} enrolments, {sum(report.erasures_by_reason.values())} "
        "erasures. Counts only: no person searched for is named.</p>"
        + "".join(charts)
        + held
        + f"<script type=application/json id=data>{embedded}</script></body></html>"
    )
