"""Add the missing </s> to an ARPA file (the wav2vec2 n-gram blog post's fix, streaming), or check one.

    w2v-fix-arpa IN OUT        # .gz on either name means gzip; OUT may be IN
    w2v-fix-arpa --check IN

Exit status: 0 done / the check passed; 1 (--check only) well formed, but kenlm.Model refuses it
(no </s> or <s>); 2 malformed or unreadable, with the line number (fixing then writes nothing).
Fixing checks the header and the 1-grams, and counts the entries of every other section against the
header while it copies them (section order and \\end\\ too); --check also checks what every entry holds.
"""

from __future__ import annotations

import sys

from w2v.flags import ArgumentParser
from w2v.lm.arpa import ArpaError
from w2v.lm.arpa_check import check_arpa  # imports numpy and numba only when a check runs
from w2v.lm.arpa_fix import fix_arpa


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="w2v-fix-arpa", description=__doc__)
    parser.add_argument("src", help="input ARPA file (.gz allowed)")
    parser.add_argument("dst", nargs="?", help="output ARPA file (.gz allowed); not with --check")
    parser.add_argument("--check", action="store_true", help="validate IN for KenLM instead of fixing it")
    parser.add_argument("--no-jit", action="store_true", help="--check in pure Python (slower, no numba)")
    args = parser.parse_args(argv)
    if args.check == (args.dst is not None):
        parser.error("give IN and OUT to fix, or --check IN")
    try:
        if args.check:
            report = check_arpa(args.src, jit=False if args.no_jit else None)
            print(report.summary())
            return 0 if report.ok else 1
        result = fix_arpa(args.src, args.dst)
    except ArpaError as e:
        print(f"{args.src}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fix_arpa: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fix_arpa: interrupted (no output written)", file=sys.stderr)
        return 130
    print(f"{result.message} ({result.bytes_written} bytes in {result.seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
