"""Host memory of a training rank: the allocator it runs with, the estimate it prints, what it logs."""

import os

import pytest
import yaml

from tests.test_train import TINY, records, train_directly
from w2v.host_memory import estimate, find_tcmalloc


def require_tcmalloc() -> None:
    """Skip where tcmalloc is not installed; in CI (CI set: make setup installs it) that is a failure."""
    if find_tcmalloc() is None:
        if os.environ.get("CI"):
            pytest.fail("libtcmalloc-minimal4 is not installed (make setup installs it)")
        pytest.skip("libtcmalloc-minimal4 is not installed")


def test_training_runs_with_tcmalloc_and_says_so(cv_shards, tmp_path):
    require_tcmalloc()
    shards, _ = cv_shards
    proc = train_directly(tmp_path / "tc", shards, "--max_steps", "2", "--logging_steps", "1")
    assert proc.returncode == 0 and "; allocator tcmalloc" in proc.stdout, proc.stderr[-2000:]
    assert all(r["host_rss_mb_max_rank"] > 100 for r in records(tmp_path / "tc") if "loss" in r)
    plain = train_directly(tmp_path / "glibc", shards, "--max_steps", "1", env={"W2V_ALLOCATOR": "system"})
    assert plain.returncode == 0 and "; allocator glibc (install libtcmalloc-minimal4" in plain.stdout


def test_the_estimate_follows_the_cap_workers_and_model_not_the_corpus():
    from transformers import Wav2Vec2Config

    config = Wav2Vec2Config(**yaml.safe_load(open(TINY))["model_config"])
    base = estimate(config, 200_000, 20.0, 30, 2, 0, on_gpu=False)
    assert estimate(config, 200_000, 40.0, 30, 2, 0, on_gpu=False).rank > base.rank  # the cap
    assert estimate(config, 200_000, 20.0, 30, 2, 2, on_gpu=False).num_workers == 2
    assert estimate(config, 200_000, 20.0, 30, 2, 2, on_gpu=False).loader < base.loader  # decoding moved out
    on_gpu = estimate(config, 200_000, 20.0, 30, 2, 0, on_gpu=True)
    assert on_gpu.activations == on_gpu.model == 0 and on_gpu.rank < base.rank  # both live on the GPU
    assert "host memory per rank (estimate)" in base.describe()


def test_the_dry_run_prints_the_expected_host_memory(cv_shards, tmp_path):
    shards, _ = cv_shards
    proc = train_directly(tmp_path / "dry", shards, "--dry_run", "true", "--dataloader_num_workers", "2")
    assert proc.returncode == 0 and "host memory per rank (estimate):" in proc.stdout
    assert "each of 2 DataLoader workers" in proc.stdout
