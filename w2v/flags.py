"""Command-line flags, the same way in every command: spelled out, a typo named with its closest flag.

argparse accepts any unambiguous prefix of a flag (`--audio-colum` for `--audio-column`), so a
typo can silently mean another flag, and answers an unknown one with its usage text. Every w2v
command parses with `ArgumentParser` instead: abbreviations are refused, an unknown flag is named
with the closest known one, and a mistake is one `error:` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`name (did you mean CLOSEST?)`, or `name` when nothing known is close."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"{name} (did you mean {close[0]}?)" if close else name


class ArgumentParser(argparse.ArgumentParser):
    """argparse without abbreviations, with "did you mean" for unknown flags, one error line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse's hook: it must not return
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            words = unknown.group(1).split()
            flags = [w.split("=", 1)[0] for w in words if w.startswith("-")]
            known = [o for o in self._option_string_actions if o.startswith("--")]
            message = (f"unknown flag{'s' if len(flags) > 1 else ''} " + ", ".join(did_you_mean(f, known) for f in flags)
                       if flags else f"values without a flag: {' '.join(words)}")
        print(f"error: {message} ({self.prog} --help lists the flags)", file=sys.stderr)
        sys.exit(2)
