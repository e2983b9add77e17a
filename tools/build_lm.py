#!/usr/bin/env python
"""`python tools/build_lm.py` is `w2v-build-lm` (installed by `make setup`); see `w2v-build-lm --help`."""

import sys

from w2v.cli.build_lm import main

if __name__ == "__main__":
    sys.exit(main())
