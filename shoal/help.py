"""One help style for every ``shoal`` command: each flag says its default."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default: ``(default: X)`` added unless the help already says
    it (flags without a value default to off; flags whose default is None explain it themselves).
    Descriptions are wrapped; text with indented lines (the exit codes) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n " in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.default is argparse.SUPPRESS
                or "default" in text):
            return text
        if action.nargs == 0:
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"
