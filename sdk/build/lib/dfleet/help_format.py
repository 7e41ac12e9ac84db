"""The help layout of the project's commands: each flag's help ends with its default."""

from __future__ import annotations

import argparse


def _says_nothing(default: object) -> bool:
    """None, an off switch, an empty string or list: the help says what that means."""
    if default is None or default is False or default is argparse.SUPPRESS:
        return True
    return isinstance(default, str | list | tuple | dict) and not default


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each flag's default to its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or _says_nothing(action.default) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"
