#!/usr/bin/env python
"""`python tools/export.py` is `w2v-export` (installed by `make setup`); see `w2v-export --help`."""

import sys

from w2v.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
