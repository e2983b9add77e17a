#!/usr/bin/env python
"""`python tools/transcribe.py` is `w2v-transcribe` (installed by `make setup`); see `w2v-transcribe --help`."""

import sys

from w2v.cli.transcribe import main

if __name__ == "__main__":
    sys.exit(main())
