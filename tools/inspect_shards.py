#!/usr/bin/env python
"""`python tools/inspect_shards.py` is `w2v-inspect-shards` (installed by `make setup`); see `w2v-inspect-shards --help`."""

import sys

from w2v.cli.inspect_shards import main

if __name__ == "__main__":
    sys.exit(main())
