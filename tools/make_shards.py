#!/usr/bin/env python
"""`python tools/make_shards.py` is `w2v-make-shards` (installed by `make setup`); see `w2v-make-shards --help`."""

import sys

from w2v.cli.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
