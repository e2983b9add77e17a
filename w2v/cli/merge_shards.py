"""Merge the parts of a corpus sharded by many machines into one index.

    w2v-merge-shards DIR

DIR was filled by `w2v-make-shards SRC --out DIR --num-parts N --part K` for every K. Checks that
every part of the plan (DIR/parts.json) is complete and made with the same settings, then writes
DIR/index.json and DIR/skipped.jsonl. Exit codes: 0 merged; 2 a part is missing or unfinished, or
DIR is not a folder of parts (nothing is written then).
"""

import sys
from pathlib import Path

from w2v.flags import ArgumentParser
from w2v.shards.parts import PartsError, merge_parts


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="w2v-merge-shards", description=__doc__)
    p.add_argument("dir", help="the --out folder of the parts")
    args = p.parse_args(argv)
    try:
        summary = merge_parts(Path(args.dir))
    except PartsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.text())
    print(f"wrote {Path(args.dir) / 'index.json'} and {Path(args.dir) / 'skipped.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
