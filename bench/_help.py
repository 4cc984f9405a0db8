"""The benchmarks' `--help`: their docstrings as written, and every option's default."""

from __future__ import annotations

import argparse
import copy


class Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's lines and adds "(default: ...)" to every option that has a default,
    with or without a help text of its own (flags and options without one say nothing)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and _shown(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return super()._get_help_string(action) if _shown(action) else action.help


def _shown(action: argparse.Action) -> bool:
    return action.default not in (None, False, argparse.SUPPRESS)
