import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import corpora

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_tool(script: str, *args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python tools/<script> args…` as a user would, from the repo root."""
    cmd = [sys.executable, str(ROOT / "tools" / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def commonvoice(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    return root, corpora.make_commonvoice(root)


@pytest.fixture(scope="session")
def librispeech(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls") / "test-clean"
    return root, corpora.make_librispeech(root)


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    return root, corpora.make_manifest(root, "jsonl")


@pytest.fixture(scope="session")
def cv_shards(commonvoice, tmp_path_factory):
    """The Common Voice test corpus as 3 FLAC shards of 2 samples each."""
    src, expected = commonvoice
    out = tmp_path_factory.mktemp("shards") / "cv"
    run_tool("make_shards.py", src, "--out", out, "--max-shard-samples", "2", "--no-progress", check=True)
    return out, expected
