#!/usr/bin/env python3
"""Add the missing </s> to an ARPA file, or check one: the same command as `w2v-fix-arpa` (see `w2v-fix-arpa --help`)."""

import sys

from w2v.cli.fix_arpa import main

if __name__ == "__main__":
    sys.exit(main())
