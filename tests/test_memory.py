"""Host memory of a training rank: the allocator it runs with, the estimate it prints, what it logs."""

import dataclasses
import math
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


# Planning a big model across ranks: counts per FSDP unit, bytes per rank and strategy, the table.

def tiny_ctc_model(**overrides):
    """A random Wav2Vec2ForCTC built from transformers' classes (nothing downloaded): 2 layers of 32."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, vocab_size=12, **overrides)
    return Wav2Vec2ForCTC(config)


def test_parameter_counts_are_the_sums_of_numel_by_unit():
    from w2v.host_memory import count_parameters

    model = tiny_ctc_model()
    counts = count_parameters(model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.trainable == counts.total  # nothing frozen yet
    assert [u.name for u in counts.units] == ["root", "layer 0", "layer 1"]
    for unit, layer in zip(counts.layers, model.wav2vec2.encoder.layers, strict=True):
        assert unit.params == sum(p.numel() for p in layer.parameters())
    outside = sum(p.numel() for name, p in model.named_parameters() if ".encoder.layers." not in name)
    assert counts.root.params == outside and counts.root.params > model.lm_head.weight.numel()

    model.freeze_feature_encoder()
    frozen = sum(p.numel() for p in model.wav2vec2.feature_extractor.parameters())
    after = count_parameters(model)
    assert after.total == counts.total and after.trainable == counts.total - frozen > 0
    assert after.root.trainable == after.root.params - frozen
    assert [u.trainable for u in after.layers] == [u.params for u in after.layers]


def test_frozen_parameters_hold_only_their_weights():
    from w2v.host_memory import count_parameters, per_rank

    model = tiny_ctc_model()
    for param in model.wav2vec2.parameters():  # only the head trains (as in freeze_finetune_steps)
        param.requires_grad_(False)
    counts = count_parameters(model)
    head = sum(p.numel() for p in model.lm_head.parameters())
    assert counts.trainable == head
    ddp = per_rank(counts, 1, "ddp")
    assert ddp.weights == 4 * counts.total
    assert ddp.gradients == ddp.buffers == 4 * head and ddp.optimizer == 8 * head
    fsdp = per_rank(counts, 4, "full_shard")
    assert fsdp.buffers == 4 * head  # only the root, which holds the head, has a gradient to unshard
    assert fsdp.gradients == -(-4 * head // 4) and fsdp.optimizer == 8 * head // 4


def test_sharding_halves_the_state_at_two_ranks_and_shard_grad_op_keeps_all_weights():
    from w2v.host_memory import count_parameters, per_rank

    model = tiny_ctc_model()
    model.freeze_feature_encoder()
    counts = count_parameters(model)
    P, T = counts.total, counts.trainable
    ddp, full, sgo = (per_rank(counts, 2, s) for s in ("ddp", "full_shard", "shard_grad_op"))

    def state(m):
        return m.weights + m.gradients + m.optimizer

    assert state(ddp) == 4 * P + 12 * T and ddp.transient == 4 * T and ddp.total == 4 * P + 16 * T
    assert abs(2 * state(full) - state(ddp)) <= 3 * 2  # each of the three sharded parts rounds up
    assert abs(2 * state(sgo) - state(ddp)) <= 3 * 2
    assert sgo.peak_weights >= ddp.weights  # gathered in the forward, kept until the backward
    layer = max(u.params for u in counts.layers)
    assert full.gathered == 4 * (counts.root.params + 2 * layer)
    assert full.buffers == sgo.buffers == 4 * max(u.trainable for u in counts.units)
    assert per_rank(counts, 8, "full_shard").total < full.total < ddp.total  # more ranks, less each
    assert per_rank(counts, 8, "ddp") == dataclasses.replace(ddp, world_size=8)  # DDP does not shard
    assert per_rank(counts, 2, "FULL_SHARD") == full  # accelerate's spelling of the strategy
    with pytest.raises(ValueError, match="hybrid_shard"):
        per_rank(counts, 2, "hybrid_shard")


def xls_r_1b_on_meta():
    """XLS-R 1B's shape (facebook/wav2vec2-xls-r-1b) with a 40-label head, built on the meta device."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(hidden_size=1280, num_hidden_layers=48, intermediate_size=5120, num_attention_heads=16,
                            conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                            num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, do_stable_layer_norm=True,
                            feat_extract_norm="layer", conv_bias=True, vocab_size=40)
    with torch.device("meta"):
        return Wav2Vec2ForCTC(config)


def test_xls_r_1b_plans_from_the_meta_device():
    from w2v.host_memory import count_parameters, per_rank, rss_mb, strategy_table

    before = rss_mb()
    model = xls_r_1b_on_meta()
    # Nothing real but masked_spec_embed (transformers makes it with torch.Tensor, which ignores
    # the default device): 1280 floats, where the real model would take 3.85 GB.
    assert sum(p.numel() for p in model.parameters() if not p.is_meta) <= 1280
    model.freeze_feature_encoder()
    counts = count_parameters(model)
    assert 0.94e9 < counts.total < 0.98e9 and len(counts.layers) == 48
    assert counts.total - counts.trainable == sum(p.numel() for p in model.wav2vec2.feature_extractor.parameters())
    ddp = per_rank(counts, 8, "ddp")
    assert 3.80e9 < ddp.weights < 3.90e9  # 4 bytes × 0.96 G
    full = per_rank(counts, 8, "full_shard")
    assert full.peak_weights < ddp.weights / 5  # its shard, the root and two of 48 layers
    assert 2.0e9 < full.total < 2.5e9 and full.total < per_rank(counts, 8, "shard_grad_op").total < ddp.total
    if not math.isnan(before):  # NaN where /proc does not say
        assert rss_mb() - before < 1000

    lines = strategy_table(counts, 8, "bf16", "full_shard")
    assert "world size 8" in lines[0] and "bf16" in lines[0] and "962.5 M parameters" in lines[0]
    rows = {line[2:].split()[0]: line for line in lines[2:5]}
    assert list(rows) == ["ddp", "full_shard", "shard_grad_op"]
    assert rows["full_shard"].startswith("*") and not rows["ddp"].startswith("*")
    assert rows["ddp"][2:].split()[1:3] == ["3.85", "GB"] and "MB" in rows["full_shard"]  # its shards are < 1 GB
    assert len({len(line) for line in lines[1:5]}) == 1  # the columns line up
    assert strategy_table(counts, 8, "no")[2].startswith("* ddp")  # no FSDP: the DDP row is the run's
