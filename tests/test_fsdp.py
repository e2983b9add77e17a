"""FSDP (PyTorch FSDP2 fully_shard) on two gloo ranks, against DDP on the same two ranks."""

import io
import math
import shutil
import tarfile
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.test_train import launch, records, train_directly
from w2v.fsdp import SHARDED_STATE
from w2v.run_folder import load_for_inference

# A model of a few M parameters (tiny.yaml's is 0.2 M): sharding halves what matters, not the overheads
MODEL = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
RUN = ["--max_steps", "4", "--max_batch_size", "2", "--save_steps", "2", "--save_total_limit", "5",
       "--hidden_dropout", "0.1", "--lr_scheduler_type", "constant", "--warmup_steps", "1",
       "--dataloader_num_workers", "1", "--eval_steps", "2"]


@pytest.fixture(scope="module")
def runs(cv_shards, tmp_path_factory) -> dict[str, Path]:
    """The same 4 updates with DDP, with FSDP full_shard, and with FSDP stopped by SIGTERM after
    update 2 and resumed; each on 2 ranks, evaluated at updates 2 and 4."""
    shards, _ = cv_shards
    root = tmp_path_factory.mktemp("fsdp")
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    tiny["model_config"].update(MODEL)
    config = root / "model.yaml"
    config.write_text(yaml.safe_dump(tiny))
    args = [*RUN, "--eval_shards", str(shards)]
    out = {name: root / name for name in ("ddp", "fsdp", "cut")}
    launch(out["ddp"], shards, *args, procs=2, config=config)
    launch(out["fsdp"], shards, *args, "--fsdp", "full_shard", procs=2, config=config)
    proc = launch(out["cut"], shards, *args, "--fsdp", "full_shard", procs=2, check=False, config=config,
                  hooks={"W2V_TEST_SIGNAL_AT_UPDATE": "1", "W2V_TEST_SIGNAL_TO": "self"})
    assert "stopped by SIGTERM after update 2" in proc.stdout, proc.stderr[-3000:]
    assert not (out["cut"] / "final").exists()
    proc = launch(out["cut"], shards, *args, "--fsdp", "full_shard", "--resume_from_checkpoint", "auto", procs=2,
                  config=config)
    assert "resumed from" in proc.stdout
    return out


def worst_difference(a: dict, b: dict, skip: str | None = None) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item()
               for k in a if not (skip and k.endswith(skip)))


# The attention's key bias adds the same score to every key of a query, which softmax cancels: its
# gradient is zero but for rounding, and AdamW turns any rounding into full-size steps. Any two ways
# of summing gradients (all-reduce, reduce-scatter) give it different weights.
NO_GRADIENT = "attention.k_proj.bias"


def final_weights(out: Path) -> dict:
    return load_file(out / "final" / "model.safetensors")


def test_fsdp_trains_the_same_weights_as_ddp(runs):
    ddp, fsdp = final_weights(runs["ddp"]), final_weights(runs["fsdp"])
    start = load_for_inference(runs["ddp"] / "checkpoints" / "step-2")[0].state_dict()
    assert worst_difference(ddp, start) > 1e-3  # the updates moved the weights
    assert worst_difference(ddp, fsdp, skip=NO_GRADIENT) <= 5e-5  # measured 1.7e-5
    losses = {name: [r["loss"] for r in records(runs[name]) if "loss" in r] for name in ("ddp", "fsdp")}
    assert len(losses["fsdp"]) == 4 and losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-5)
    evals = {name: [r["eval_wer"] for r in records(runs[name]) if "eval_wer" in r] for name in ("ddp", "fsdp")}
    assert len(evals["fsdp"]) == 2 and evals["fsdp"] == evals["ddp"]


def test_an_fsdp_run_stopped_by_sigterm_resumes_to_the_same_weights(runs):
    step = runs["cut"] / "checkpoints" / "step-2"
    assert len(list((step / SHARDED_STATE).glob("*.distcp"))) == 2  # one file per rank
    assert not (step / "model.safetensors").exists()  # the weights are only in the shards
    assert worst_difference(final_weights(runs["fsdp"]), final_weights(runs["cut"])) <= 1e-5
    # a sharded checkpoint reads back as one model, without a process group (w2v-evaluate's way)
    at_4 = load_for_inference(runs["fsdp"] / "checkpoints" / "step-4")[0].state_dict()
    assert worst_difference(final_weights(runs["fsdp"]), at_4) == 0


def test_each_fsdp_rank_holds_about_half_the_weights_and_optimizer_state(runs):
    held = {name: max(r["model_state_mb_max_rank"] for r in records(runs[name]) if "loss" in r)
            for name in ("ddp", "fsdp")}
    params = sum(t.numel() for t in final_weights(runs["ddp"]).values())
    assert params > 3e6
    assert held["ddp"] == pytest.approx(3 * 4 * params / 2**20, rel=0.02)  # weights + AdamW's two moments, fp32
    assert 0.48 <= held["fsdp"] / held["ddp"] <= 0.55


def test_the_fsdp_final_folder_loads_in_pipeline(runs, cv_shards, tmp_path):
    from transformers import pipeline

    shards, _ = cv_shards
    with tarfile.open(sorted(shards.glob("*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".flac"))
        audio, rate = sf.read(io.BytesIO(tar.extractfile(member).read()), dtype="float32")
    wav = tmp_path / "clip.wav"
    sf.write(wav, audio, rate)
    asr = pipeline("automatic-speech-recognition", model=str(runs["fsdp"] / "final"), device=-1)
    assert isinstance(asr(str(wav))["text"], str)
    # the gathered weights, whole: what pipeline() runs is what FSDP trained
    assert worst_difference(final_weights(runs["fsdp"]), asr.model.state_dict()) == 0


def test_an_fsdp_checkpoint_is_not_resumed_as_ddp(runs, cv_shards, tmp_path):
    shards, _ = cv_shards
    proc = launch(tmp_path / "ddp", shards, *RUN, "--resume_from_checkpoint", str(runs["fsdp"] / "checkpoints" / "step-2"),
                  procs=2, check=False, config=runs["ddp"].parent / "model.yaml")
    assert proc.returncode != 0 and "fsdp: checkpoint sharded, now DDP" in proc.stderr


def test_accumulation_and_checkpointing_under_shard_grad_op_match_ddp(runs, cv_shards, tmp_path):
    """Two micro-batches per update (gradients reduce-scattered after each, summed in the shards),
    activations recomputed in the backward, weights kept gathered between forward and backward:
    the same updates as DDP's; and bf16 autocast trains under FSDP."""
    shards, _ = cv_shards
    config = runs["ddp"].parent / "model.yaml"
    # (a flag given twice: the last one counts)
    args = [*RUN, "--max_batch_size", "1", "--gradient_accumulation_steps", "2", "--gradient_checkpointing", "true"]
    launch(tmp_path / "ddp", shards, *args, procs=2, config=config)
    launch(tmp_path / "fsdp", shards, *args, "--fsdp", "shard_grad_op", procs=2, config=config)
    assert worst_difference(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp"), skip=NO_GRADIENT) <= 5e-5
    launch(tmp_path / "bf16", shards, *RUN, "--fsdp", "full_shard", procs=2, config=config, precision="bf16")
    losses = [r["loss"] for r in records(tmp_path / "bf16") if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


def test_a_two_rank_fsdp_checkpoint_resumes_on_one_rank(runs, cv_shards, tmp_path):
    """torch.distributed.checkpoint re-shards on load; the loader re-plans the rest of the epoch."""
    shards, _ = cv_shards
    out = tmp_path / "one"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(runs["cut"] / "checkpoints" / "step-2", out / "checkpoints" / "step-2")
    shutil.copy(runs["cut"] / "vocab.json", out)
    proc = train_directly(out, shards, *RUN, "--fsdp", "full_shard", "--resume_from_checkpoint", "latest",
                          config=runs["ddp"].parent / "model.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at update 2 (epoch" in proc.stdout and "elastic" in proc.stdout
    resumed, at_2 = final_weights(out), load_for_inference(out / "checkpoints" / "step-2")[0].state_dict()
    assert 1e-3 < worst_difference(resumed, at_2)  # it trained on from there
    # the two ranks' shards of weights and AdamW state, now all on one rank
    held = {name: max(r["model_state_mb_max_rank"] for r in records(out_dir) if "loss" in r)
            for name, out_dir in (("one", out), ("two", runs["cut"]))}
    assert held["one"] == pytest.approx(2 * held["two"], rel=0.01)


def test_accelerates_own_fsdp_plugin_is_refused(cv_shards, tmp_path):
    shards, _ = cv_shards
    proc = train_directly(tmp_path / "x", shards, env={"ACCELERATE_USE_FSDP": "true"})
    assert proc.returncode == 2 and "pass --fsdp full_shard" in proc.stderr and "Traceback" not in proc.stderr


def test_fp16_with_a_plain_optimizer_drives_the_scaler():
    """FSDP's optimizer is not Accelerate's: optimizer_step unscales before clipping, skips an
    overflow (decided from the total norm, the same on every rank) and lowers the scale."""
    from accelerate import Accelerator

    import train

    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    accelerator.scaler.scale(model(torch.ones(1, 3)).sum() * float("inf")).backward()
    step = train.optimizer_step(accelerator, model, optimizer, scheduler, torch.tensor(1.0), 1e9)
    assert step.outcome == "overflow" and accelerator.scaler.get_scale() == 2.0**9
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()) and scheduler.get_last_lr() == [0.1]
    accelerator.scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    true_norm = 8**0.5  # d(sum)/dW = ones (2×3), d/db = ones (2): 8 ones, unscaled
    step = train.optimizer_step(accelerator, model, optimizer, scheduler, torch.tensor(1.0), 1e9)
    assert step.outcome == "stepped" and float(step.grad_norm) == pytest.approx(true_norm, rel=1e-5)
    assert scheduler.get_last_lr() == [0.05] and not torch.equal(before["bias"], model.bias)
