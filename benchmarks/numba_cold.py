"""Shared by the numba benchmarks: how long a kernel's first call takes with an empty numba cache."""

import subprocess
import sys
import tempfile
from pathlib import Path


def cold_compile_seconds(code: str) -> float:
    """Runs `code` (which prints the seconds of the first call as its last word) in a fresh process
    with an empty numba cache, so the figure is the compile time a new machine pays once."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as cache:
        env = {"NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                              text=True, check=True)
    return float(proc.stdout.split()[-1])
