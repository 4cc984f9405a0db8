"""Figures tests measure (accuracy, throughput), printed at the end of the run by conftest.

A module of its own so that the conftest pytest loads and the tests that import it share one list."""

from __future__ import annotations

FIGURES: list[str] = []


def report_figure(line: str) -> None:
    """A measured figure to print at the end of the run."""
    FIGURES.append(line)
