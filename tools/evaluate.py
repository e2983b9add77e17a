#!/usr/bin/env python
"""`python tools/evaluate.py` is `w2v-evaluate` (installed by `make setup`); see `w2v-evaluate --help`."""

import sys

from w2v.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
