#!/usr/bin/env python
"""`python tools/merge_shards.py` is `w2v-merge-shards` (installed by `make setup`); see `w2v-merge-shards --help`."""

import sys

from w2v.cli.merge_shards import main

if __name__ == "__main__":
    sys.exit(main())
