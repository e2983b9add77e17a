"""train.py for real: `accelerate launch` with one process and with two gloo ranks on the CPU."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import train
from tests.conftest import ROOT, run_command
from w2v.config import TrainConfig
from w2v.data.loader import LoaderConfig, SpeechLoader
from w2v.metrics import ErrorCounts
from w2v.model import CTCModel, load_model, wants_attention_mask
from w2v.shards.index import read_index
from w2v.text import TextNormalizer, Vocabulary

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TINY = str(ROOT / "configs" / "tiny.yaml")


def launch(out: Path, shards, *args: str, procs: int = 1, check: bool = True,
           hooks: dict[str, str] | None = None, precision: str = "no",
           config: str | Path = TINY) -> subprocess.CompletedProcess:
    """`accelerate launch [--multi_gpu --num_processes 2] train.py --config configs/tiny.yaml …`;
    with `hooks` (W2V_TEST_* variables), tests/train_with_hooks.py instead of train.py."""
    dist = ["--multi_gpu", "--num_processes", "2"] if procs == 2 else ["--num_processes", "1"]
    script = ROOT / ("tests/train_with_hooks.py" if hooks else "train.py")
    cmd = [ACCELERATE, "launch", *dist, "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no",
           str(script), "--config", str(config), "--train_shards", str(shards), "--output_dir", str(out), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(hooks or {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in sorted(grads)])


def test_gradient_is_independent_of_batch_accumulation_and_world_size(cv_shards, tmp_path):
    shards, expected = cv_shards  # 6 utterances in 3 shards
    common = ["--max_steps", "1", "--num_buckets", "1", "--max_batch_seconds", "1000", "--max_grad_norm", "1e9"]
    runs = {
        "6x1x1": (1, ["--max_batch_size", "6", "--gradient_accumulation_steps", "1"]),
        "3x2x1": (1, ["--max_batch_size", "3", "--gradient_accumulation_steps", "2"]),
        "4x1x2": (2, ["--max_batch_size", "4", "--gradient_accumulation_steps", "1"]),
    }
    grads = {}
    for name, (procs, args) in runs.items():
        dump = tmp_path / f"{name}.pt"
        launch(tmp_path / name, shards, *common, *args, procs=procs, hooks={"W2V_TEST_DUMP_GRADIENTS": str(dump)})
        grads[name] = flat(torch.load(dump))
    ref = grads["6x1x1"]
    assert ref.norm() > 0
    for name in ("3x2x1", "4x1x2"):
        rel = (grads[name] - ref).norm() / ref.norm()
        assert rel <= 1e-5, (name, rel.item())


def test_resume_mid_run_equals_an_uninterrupted_run(cv_shards, tmp_path):
    shards, _ = cv_shards
    args = ["--max_steps", "8", "--save_steps", "4", "--save_total_limit", "3", "--max_batch_size", "2",
            "--hidden_dropout", "0.1", "--dataloader_num_workers", "2"]
    full = tmp_path / "full"
    launch(full, shards, *args)
    resumed = tmp_path / "resumed"
    proc = launch(resumed, shards, *args, "--resume_from_checkpoint", str(full / "checkpoints" / "step-4"))
    assert "resumed from" in proc.stdout
    a, b = load_file(full / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item() for k in a)
    assert worst <= 1e-5
    assert [r["loss"] for r in records(full)][4:] == pytest.approx([r["loss"] for r in records(resumed)], rel=1e-5)
    # a checkpoint from another configuration is refused before training
    proc = launch(tmp_path / "other", shards, *args, "--seed", "7", "--resume_from_checkpoint",
                  str(full / "checkpoints" / "step-4"), check=False)
    assert proc.returncode != 0 and "another configuration" in proc.stderr  # train.py exits 2; accelerate 1


@pytest.fixture(scope="module")
def odd_eval_shards(commonvoice, tmp_path_factory):
    """5 utterances: the longest of the 6 filtered out, so the set does not divide by 2."""
    src, expected = commonvoice
    longest = max(d for d, _ in expected.written.values())
    out = tmp_path_factory.mktemp("odd") / "eval"
    run_command("w2v-make-shards", src, "--out", out, "--max-shard-samples", "2", "--max-duration",
             str(longest - 0.01), "--no-progress", check=True)
    return out


def test_evaluation_is_the_same_in_one_process_two_and_w2v_evaluate(cv_shards, odd_eval_shards, memorised,
                                                                     tmp_path):
    """A model that transcribes (the memorised one, not trained further) scored on 5 utterances by one
    process and by two: the same error counts, so the same WER (an average of per-rank WERs, or one
    rank's counts, would differ from the pooled counts); and w2v-evaluate on the same model and
    shards gives training's figures (one scoring path)."""
    shards, _ = cv_shards
    durations = [d for s in read_index(odd_eval_shards)["shards"] for d in s["durations"]]
    cap = sorted(durations)[-2] - 0.01  # the two longest do not fit a batch: each is batched alone
    args = ["--eval_shards", str(odd_eval_shards), "--max_steps", "1", "--learning_rate", "0",
            "--eval_max_batch_seconds", str(cap), "--model_name_or_path", str(memorised / "final")]
    one, two = tmp_path / "one", tmp_path / "two"
    launch(one, shards, *args)
    launch(two, shards, *args, procs=2)
    ev1 = [r for r in records(one) if "eval_wer" in r][-1]
    ev2 = [r for r in records(two) if "eval_wer" in r][-1]
    assert ev1["eval_utterances"] == ev2["eval_utterances"] == 5  # every utterance, none dropped
    assert ev1["eval_excluded"] == ev2["eval_excluded"] == {}
    assert 0 < ev1["eval_cer"] < 0.5, ev1  # hypotheses with text in them, and some errors
    for key in ("eval_words", "eval_word_edits", "eval_chars", "eval_char_edits", "eval_wer", "eval_cer"):
        assert ev1[key] == ev2[key], key
    assert ev1["eval_loss"] == pytest.approx(ev2["eval_loss"], rel=1e-5)
    report = tmp_path / "eval.json"
    run_command("w2v-evaluate", "--model", memorised / "final", "--shards", odd_eval_shards,
                "--max-batch-seconds", str(cap), "--json", report, check=True)
    greedy, scored = json.loads(report.read_text())["greedy"], json.loads(report.read_text())["utterances"]
    assert (scored, greedy["words"], greedy["word_edits"], greedy["wer"], greedy["cer"]) == (
        ev1["eval_utterances"], ev1["eval_words"], ev1["eval_word_edits"], ev1["eval_wer"], ev1["eval_cer"])


def test_nan_loss_on_one_rank_skips_the_update_on_both(cv_shards, tmp_path):
    shards, _ = cv_shards
    states = tmp_path / "states"
    states.mkdir()
    proc = launch(tmp_path / "nan", shards, "--max_steps", "3", "--max_batch_size", "2", "--warmup_steps", "1",
                  procs=2, hooks={"W2V_TEST_NAN_UPDATE": "1", "W2V_TEST_DUMP_STATES": str(states)})
    skipped = [line for line in proc.stdout.splitlines() if "skipped updates" in line]
    assert len(skipped) == 2 and all("'skipped_nonfinite': 1" in line for line in skipped), proc.stdout
    last = records(tmp_path / "nan")[-1]
    assert last["skipped_nonfinite"] == 1 and last["update"] == 3
    weights = load_file(tmp_path / "nan" / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())

    def state(rank: int, update: int, when: str) -> dict:
        return torch.load(states / f"rank{rank}-update{update}-{when}.pt")

    for rank in (0, 1):
        # the NaN update leaves parameters, optimizer moments and step count, and the schedule bitwise as
        # they were; the updates around it move them (so the comparison can tell)
        before, after = state(rank, 1, "before"), state(rank, 1, "after")
        assert before["lr"] == after["lr"]
        for name, value in before["params"].items():
            assert torch.equal(value, after["params"][name]), (rank, name)
        assert before["optimizer"].keys() == after["optimizer"].keys()
        for k, moments in before["optimizer"].items():
            for n, v in moments.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(after["optimizer"][k][n])), (rank, k, n)
        assert before["optimizer"] and not state(rank, 0, "before")["optimizer"]  # update 0 stepped (at lr 0)
        moved_from, moved_to = state(rank, 2, "before"), state(rank, 2, "after")
        assert any(not torch.equal(v, moved_to["params"][n]) for n, v in moved_from["params"].items())
        assert moved_to["lr"] != moved_from["lr"]


def test_an_fp16_overflow_is_skipped_by_the_scaler_and_counted_as_overflow():
    """optimizer_step with a real GradScaler (torch's CPU scaler, as fp16 runs get on CUDA): an inf
    gradient is an "overflow": parameters and schedule untouched, the scale halved; the next finite
    update steps both. (train.py counts each outcome other than "stepped" as skipped_<outcome>.)"""
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    accelerator.scaler.scale(model(torch.ones(1, 3)).sum() * float("inf")).backward()
    step = train.optimizer_step(accelerator, model, optimizer, scheduler, torch.tensor(1.0), 1e9)
    assert step.outcome == "overflow" and accelerator.scaler.get_scale() == 2.0**15
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert scheduler.get_last_lr() == [0.1]
    accelerator.scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    step = train.optimizer_step(accelerator, model, optimizer, scheduler, torch.tensor(1.0), 1e9)
    assert step.outcome == "stepped" and scheduler.get_last_lr() == [0.05]
    assert not all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_attention_mask_rule_follows_the_feature_norm(cv_shards):
    shards, _ = cv_shards
    vocab = Vocabulary.build(t for s in read_index(shards)["shards"] for t in s["texts"])
    for norm, mask_expected in (("group", False), ("layer", True)):
        cfg = TrainConfig()
        cfg.model_config = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 16, "conv_dim": [8] * 7, "feat_extract_norm": norm,
                            "do_stable_layer_norm": norm == "layer", "num_conv_pos_embeddings": 8,
                            "num_conv_pos_embedding_groups": 2}
        model, _ = load_model(cfg, vocab)
        assert wants_attention_mask(model.config) is mask_expected
        seen = []
        model.wav2vec2.register_forward_pre_hook(lambda m, a, kw, seen=seen: seen.append(kw.get("attention_mask")),
                                                 with_kwargs=True)
        loader = SpeechLoader(shards, LoaderConfig(max_batch_seconds=20, return_attention_mask=mask_expected),
                              vocab=vocab)
        accelerator = Accelerator(cpu=True)
        for batch in loader:
            train.ctc_loss_sum(CTCModel(model), batch, vocab.pad_id, accelerator, True)
        assert seen and all((m is not None) is mask_expected for m in seen)


def test_memorises_a_few_utterances_and_pipeline_loads_the_result(cv_shards, memorised, tmp_path):
    from transformers import pipeline

    shards, expected = cv_shards
    out = memorised
    recs = records(out)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.05 * losses[0]
    final_eval = [r for r in recs if "eval_wer" in r][-1]
    assert final_eval["eval_cer"] < 0.1, final_eval
    # the saved folder is a plain Hugging Face model: pipeline() transcribes a file with it
    with tarfile.open(sorted(shards.glob("*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".flac"))
        audio, sr = sf.read(io.BytesIO(tar.extractfile(member).read()), dtype="float32")
    wav = tmp_path / "clip.wav"
    sf.write(wav, audio, sr)
    asr = pipeline("automatic-speech-recognition", model=str(out / "final"), device=-1)
    text = asr(str(wav))["text"]
    reference = TextNormalizer()(expected.written[member.name.split(".")[0]][1])
    assert ErrorCounts.of([reference], [text]).cer < 0.2, (reference, text)


def train_directly(out: Path, shards, *args: str, config: str | Path = TINY, env: dict[str, str] | None = None,
                   hooks: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python train.py …` in one process (exit codes and error lines are its own, not accelerate's);
    with `hooks`, tests/train_with_hooks.py."""
    script = ROOT / ("tests/train_with_hooks.py" if hooks else "train.py")
    cmd = [sys.executable, str(script), "--config", str(config), "--train_shards", str(shards),
           "--output_dir", str(out), *args]
    environment = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    environment.update({"PYTHONPATH": str(ROOT), **(env or {}), **(hooks or {})})
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment)


def test_the_launchers_precision_is_used_saved_and_repeatable(cv_shards, tmp_path):
    import yaml

    shards, _ = cv_shards
    dtype = tmp_path / "dtype.txt"
    proc = launch(tmp_path / "bf16", shards, "--max_steps", "2", "--max_batch_size", "2", precision="bf16",
                  hooks={"W2V_TEST_LOGITS_DTYPE": str(dtype)})
    assert "mixed precision: bf16 (from accelerate launch)" in proc.stdout
    assert dtype.read_text() == "torch.bfloat16"  # the model really ran under bf16 autocast
    saved = yaml.safe_load((tmp_path / "bf16" / "config.yaml").read_text())
    assert saved["mixed_precision"] == "bf16" and saved["model_config"]["hidden_size"] == 96
    # the saved file repeats the run: same settings, same weights
    again = train_directly(tmp_path / "again", shards, config=tmp_path / "bf16" / "config.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"mixed precision: bf16 (from {tmp_path / 'bf16' / 'config.yaml'})" in again.stdout
    a = load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    b = load_file(tmp_path / "again" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_precision_sources_that_disagree_are_named(cv_shards, tmp_path):
    shards, _ = cv_shards
    both = train_directly(tmp_path / "both", shards, "--mixed_precision", "no", env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert both.returncode == 2
    assert "train.py --mixed_precision no but accelerate launch --mixed_precision bf16" in both.stderr
    fp16 = train_directly(tmp_path / "fp16", shards, "--mixed_precision", "fp16")
    assert fp16.returncode == 2 and "fp16" in fp16.stderr and "needs a CUDA GPU" in fp16.stderr
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(Path(TINY).read_text() + "mixed_precision: fp16\n")
    proc = train_directly(tmp_path / "recipe", shards, "--max_steps", "1", config=recipe,
                          env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"mixed precision: bf16 (from accelerate launch; {recipe} says fp16" in proc.stdout


def test_a_model_config_typo_is_refused(cv_shards, tmp_path):
    shards, _ = cv_shards
    typo = tmp_path / "typo.yaml"
    typo.write_text(Path(TINY).read_text().replace("num_hidden_layers:", "num_hiden_layers:"))
    proc = train_directly(tmp_path / "typo", shards, config=typo)
    assert proc.returncode == 2
    assert "num_hiden_layers: did you mean num_hidden_layers" in proc.stderr


# --- checkpoints in the hub's CTC layout (facebook/wav2vec2-base-960h's) -----------------------


def test_evaluate_reads_a_hub_checkpoint(cv_shards, hub_ctc_folder, tmp_path):
    shards, _ = cv_shards
    errors = tmp_path / "errors.jsonl"
    run_command("w2v-evaluate", "--model", hub_ctc_folder, "--shards", shards, "--errors", errors, check=True)
    refs = [json.loads(line)["ref"] for line in errors.read_text().splitlines()]
    assert len(refs) == 6 and all(r == r.upper() and r for r in refs)  # normalised to the vocabulary's case


def test_train_from_a_hub_checkpoint_keeps_or_replaces_its_head(cv_shards, hub_ctc_folder, tmp_path):
    shards, _ = cv_shards
    base = ["--model_name_or_path", str(hub_ctc_folder), "--max_steps", "2", "--max_batch_size", "2"]
    kept = train_directly(tmp_path / "kept", shards, *base, "--vocab_path", str(hub_ctc_folder / "vocab.json"))
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert "the vocabulary is upper-case" in kept.stdout and "its vocabulary" in kept.stdout
    saved = json.loads((tmp_path / "kept" / "final" / "tokenizer_config.json").read_text())
    assert saved["pad_token"] == "<pad>" and saved["unk_token"] == "<unk>"
    assert json.loads((tmp_path / "kept" / "final" / "config.json").read_text())["vocab_size"] == 32

    refused = train_directly(tmp_path / "refused", shards, *base)  # a vocabulary built from the data
    assert refused.returncode == 2 and "--ignore_mismatched_sizes" in refused.stderr
    assert "has a CTC head of 32 labels" in refused.stderr

    fresh = train_directly(tmp_path / "fresh", shards, *base, "--ignore_mismatched_sizes")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "a fresh CTC head of" in fresh.stdout and "had 32 labels" in fresh.stdout
    new_vocab = json.loads((tmp_path / "fresh" / "vocab.json").read_text())
    assert "[PAD]" in new_vocab and len(new_vocab) != 32
    assert json.loads((tmp_path / "fresh" / "final" / "config.json").read_text())["vocab_size"] == len(new_vocab)


def test_model_switches_change_what_trains_and_not_the_gradient(cv_shards, tmp_path):
    """One update's gradients with each switch: gradient checkpointing gives the same gradients
    (it only recomputes activations); layerdrop 1.0 drops every transformer layer (no gradient
    reaches them); freeze_finetune_steps trains the CTC head alone (no gradient below it)."""
    shards, _ = cv_shards
    common = ["--max_steps", "1", "--max_batch_size", "2", "--hidden_dropout", "0", "--attention_dropout", "0",
              "--activation_dropout", "0", "--mask_time_prob", "0"]

    def gradients(name: str, *args: str) -> tuple[dict, dict]:
        dump = tmp_path / f"{name}.pt"
        proc = train_directly(tmp_path / name, shards, *common, *args, hooks={"W2V_TEST_DUMP_GRADIENTS": str(dump)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(dump), json.loads(Path(f"{dump}.json").read_text())

    plain, plain_flags = gradients("plain")
    layers = {n for n in plain if ".encoder.layers." in n}
    assert layers and not plain_flags["gradient_checkpointing"] and plain_flags["layerdrop"] == 0
    checkpointed, flags = gradients("checkpointed", "--gradient_checkpointing", "true")
    assert flags["gradient_checkpointing"] and checkpointed.keys() == plain.keys()
    assert ((flat(checkpointed) - flat(plain)).norm() / flat(plain).norm()).item() <= 1e-5
    dropped, flags = gradients("layerdrop", "--layerdrop", "1.0")
    assert flags["layerdrop"] == 1.0 and not layers & dropped.keys() and "lm_head.weight" in str(list(dropped))
    frozen, _ = gradients("frozen", "--freeze_finetune_steps", "1")
    assert frozen and all("lm_head" in n for n in frozen), sorted(frozen)


def test_pipe_shards_with_a_train_index(cv_shards, tmp_path):
    """--train_shards as a `pipe:` command (how object-storage CLIs are streamed) with --train_index."""
    shards, _ = cv_shards
    names = sorted(p.name for p in shards.glob("*.tar"))
    first, last = names[0].split(".")[0].split("-")[-1], names[-1].split(".")[0].split("-")[-1]
    prefix = names[0].rsplit("-", 1)[0]
    spec = f"pipe:cat {shards}/{prefix}-{{{first}..{last}}}.tar"
    proc = train_directly(tmp_path / "pipe", spec, "--max_steps", "2", "--train_index", str(shards / "index.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["update"] for r in records(tmp_path / "pipe") if "loss" in r] == [1, 2]
    without = train_directly(tmp_path / "no-index", spec, "--max_steps", "1")
    assert without.returncode == 2 and "index" in without.stderr


def test_a_damaged_shard_in_a_two_rank_run_neither_hangs_nor_stops_it(cv_shards, tmp_path):
    """A shard cut short in the middle: the rank reading it yields an empty stand-in batch for the
    lost utterance, both ranks take every update together, and the drop is counted."""
    shards, _ = cv_shards
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    victim = sorted(broken.glob("*.tar"))[1]
    with tarfile.open(victim) as tar:
        members = tar.getmembers()
    victim.write_bytes(victim.read_bytes()[:members[1].offset_data + members[1].size + 700])
    out = tmp_path / "run"
    launch(out, broken, "--max_steps", "4", "--max_batch_size", "1", "--logging_steps", "1", procs=2)
    recs = [r for r in records(out) if "loss" in r]
    assert [r["update"] for r in recs] == [1, 2, 3, 4] and (out / "final" / "model.safetensors").is_file()
    assert recs[-1]["drops"].get("corrupt_shard", 0) >= 1


def test_the_best_model_is_kept_and_checkpoints_are_models(cv_shards, tmp_path):
    """Evaluations at updates 2, 4 and 6: best/ holds the model of the lowest eval_loss, final/ is it
    with load_best_model_at_end, and a checkpoint is a model that w2v-evaluate reads."""
    from w2v.run_folder import load_for_inference

    shards, expected = cv_shards
    out = tmp_path / "run"
    proc = train_directly(out, shards, *CONSTANT, "--max_steps", "6", "--eval_steps", "2", "--save_steps", "2",
                          "--save_total_limit", "3", "--eval_shards", str(shards), "--metric_for_best_model",
                          "eval_loss", "--load_best_model_at_end", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = {r["update"]: r["eval_loss"] for r in records(out) if "eval_loss" in r}
    assert sorted(evals) == [2, 4, 6] and len(set(evals.values())) == 3
    best = min(evals, key=evals.get)
    state = json.loads((out / "best" / "best_state.json").read_text())
    assert state["update"] == best and state["metric"] == "eval_loss" and state["value"] == pytest.approx(evals[best])
    assert f"final/ is the best model: update {best}" in proc.stdout
    lines = proc.stdout.splitlines()  # each evaluation's examples follow its header, on lines of their own
    header = next(i for i, line in enumerate(lines) if line.startswith("update 2: eval WER"))
    assert lines[header + 1].startswith("  ref: ") and lines[header + 2].startswith("  hyp: ")
    assert all(line.startswith("  ref: ") for line in lines if "ref: " in line)
    kept = load_file(out / "best" / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    checkpoint, files = load_for_inference(out / "checkpoints" / f"step-{best}")
    assert files == out / "checkpoints" / f"step-{best}" / "model"
    for name, value in checkpoint.state_dict().items():
        assert torch.equal(value, kept[name]) and torch.equal(value, final[name]), name
    report = tmp_path / "eval.json"
    proc = run_command("w2v-evaluate", "--model", out / "checkpoints" / "step-6", "--shards", shards, "--json", report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(report.read_text())["utterances"] == len(expected.written)
    refused = train_directly(tmp_path / "no-eval", shards, "--max_steps", "1", "--load_best_model_at_end", "true")
    assert refused.returncode == 2 and "needs --eval_shards" in refused.stderr


def test_mistakes_are_one_error_line_before_any_model_work(cv_shards, tmp_path):
    """Plausible mistakes end in one `error:` line and exit 2, without a traceback; parsing and the
    checks run before the model is built."""
    from w2v.config import ConfigError, parse_config

    shards, _ = cv_shards
    base = ["--config", TINY, "--train_shards", str(shards)]
    for args, words in (
        (["--learnig_rate", "3"], "unknown flag --learnig_rate (did you mean --learning_rate?)"),
        (["--eval_shards", str(tmp_path / "dev")], f"--eval_shards: {tmp_path / 'dev'}: no such file or folder"),
        (["--metric_for_best_model", "wer"], "choose one of eval_wer, eval_cer, eval_loss"),
        (["--lr_scheduler_type", "cosine_with_restarts"], "--lr_scheduler_type cosine_with_restarts: choose one of"),
        (["lonely"], "values without a flag: lonely"),
        (["--fsdp", "hybrid_shard"], "--fsdp hybrid_shard: choose one of full_shard, shard_grad_op"),
    ):
        with pytest.raises(ConfigError) as err:
            train.check_inputs(parse_config(base + args))
        assert words in str(err.value), (args, str(err.value))
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(["--config", str(tmp_path / "nothere.yaml")])
    # --config=FILE, and Hugging Face's space-separated form of a character list
    cfg = parse_config([f"--config={TINY}", "--train_shards", "s", "--chars_to_ignore", ",", "?", ".", "!"])
    assert cfg.chars_to_ignore == ",?.!" and cfg.max_steps == 4  # the YAML was read
    # as the user sees them: exit status 2 and the error line alone
    for args, words in ((["--learnig_rate", "3"], "did you mean --learning_rate?"),
                        (["--max_duration", "0.05"], "passes the filters")):
        proc = train_directly(tmp_path / "x", shards, *args)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    # --dry_run: every check and the plan per rank, then stop: no checkpoint, no model saved
    dry = launch(tmp_path / "dry", shards, "--dry_run", "true", "--max_batch_size", "1", procs=2)
    table = dry.stdout[dry.stdout.index("dry run: the plan"):].splitlines()
    rows = [line.split() for line in table[2:4]]
    assert [r[0] for r in rows] == ["0", "1"] and rows[0][1:3] == rows[1][1:3], dry.stdout  # ranks in step
    assert int(rows[0][1]) >= 3 and "nothing trained, no checkpoint written" in dry.stdout  # 6 utterances of 1
    assert not (tmp_path / "dry" / "checkpoints").exists() and not (tmp_path / "dry" / "final").exists()
    helped = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--config FILE.yaml" in helped.stdout


# --- runs that survive a cluster: continued, preempted, output folders ---------------------------


def weights_close(a_dir: Path, b_dir: Path, tol: float = 1e-5) -> bool:
    a, b = load_file(a_dir / "final" / "model.safetensors"), load_file(b_dir / "final" / "model.safetensors")
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12)).item() for k in a) <= tol


CONSTANT = ["--lr_scheduler_type", "constant", "--warmup_steps", "2", "--max_batch_size", "2",
            "--save_steps", "1000", "--hidden_dropout", "0.1"]


def test_a_finished_run_is_continued_as_if_it_had_been_one(cv_shards, tmp_path):
    shards, _ = cv_shards
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_directly(whole, shards, *CONSTANT, "--max_steps", "8").returncode == 0
    assert train_directly(parts, shards, *CONSTANT, "--max_steps", "4").returncode == 0
    assert (parts / "checkpoints" / "step-4").is_dir()  # the last update writes a checkpoint
    proc = train_directly(parts, shards, *CONSTANT, "--max_steps", "8", "--resume_from_checkpoint", "latest")
    assert proc.returncode == 0 and "resumed from" in proc.stdout, proc.stderr[-2000:]
    assert weights_close(whole, parts)
    assert [r["update"] for r in records(parts) if "loss" in r] == list(range(1, 9))


def test_a_run_that_fails_mid_epoch_exits_with_its_loader_workers(cv_shards, tmp_path):
    """An error in the loop leaves the epoch's DataLoader workers running (the traceback keeps their
    iterator alive) and they ignore SIGTERM: the exit must still end, with the error and status 1,
    not wait on them for ever."""
    shards, _ = cv_shards
    proc = train_directly(tmp_path / "x", shards, *CONSTANT, "--max_steps", "8", "--dataloader_num_workers", "2",
                          hooks={"W2V_TEST_RAISE_AT_UPDATE": "1"}, timeout=120)
    assert proc.returncode == 1 and "RuntimeError: W2V_TEST_RAISE_AT_UPDATE: update 1" in proc.stderr


def test_a_signal_stops_after_the_update_with_a_checkpoint(cv_shards, tmp_path):
    shards, _ = cv_shards
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train_directly(whole, shards, *CONSTANT, "--max_steps", "8").returncode == 0
    proc = train_directly(cut, shards, *CONSTANT, "--max_steps", "8",
                          hooks={"W2V_TEST_SIGNAL_AT_UPDATE": "3", "W2V_TEST_SIGNAL_TO": "self"})
    assert proc.returncode == 75, proc.stderr[-2000:]  # PREEMPTED_EXIT_CODE
    assert "SIGTERM: finishing this update" in proc.stderr and "stopped by SIGTERM after update 4" in proc.stdout
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step-4"] and not (cut / "final").exists()
    again = train_directly(cut, shards, *CONSTANT, "--max_steps", "8", "--resume_from_checkpoint", "auto")
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-2000:]
    assert weights_close(whole, cut)  # no update lost, none done twice


def test_sigterm_to_the_launcher_of_two_processes(cv_shards, tmp_path):
    shards, _ = cv_shards
    args = [*CONSTANT, "--max_steps", "6", "--dataloader_num_workers", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    launch(whole, shards, *args, procs=2)
    proc = launch(cut, shards, *args, procs=2, check=False,
                  hooks={"W2V_TEST_SIGNAL_AT_UPDATE": "2", "W2V_TEST_SIGNAL_TO": "parent"})
    assert proc.returncode != 0 and "stopped by SIGTERM after update 3" in proc.stdout, proc.stderr[-3000:]
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step-3"]
    launch(cut, shards, *args, "--resume_from_checkpoint", "auto", procs=2)
    assert weights_close(whole, cut)


def test_output_folders_of_other_runs_are_not_mixed_in(cv_shards, tmp_path):
    shards, _ = cv_shards
    out = tmp_path / "run"
    assert train_directly(out, shards, "--max_steps", "2").returncode == 0
    again = train_directly(out, shards, "--max_steps", "2")
    assert again.returncode == 2 and "holds another run" in again.stderr and "--overwrite_output_dir" in again.stderr
    replaced = train_directly(out, shards, "--max_steps", "3", "--overwrite_output_dir", "--save_steps", "1",
                              "--save_total_limit", "2")
    assert replaced.returncode == 0
    assert [r["update"] for r in records(out) if "loss" in r] == [1, 2, 3]  # the old run's lines are gone
    # the old run's checkpoint is gone, and save_total_limit kept the newest two of this one's
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    fresh = train_directly(tmp_path / "new", shards, "--max_steps", "1", "--resume_from_checkpoint", "auto")
    assert fresh.returncode == 0 and "resumed" not in fresh.stdout  # auto without a checkpoint: a fresh start
    zero = train_directly(tmp_path / "zero", shards, "--save_total_limit", "0")
    assert zero.returncode == 2 and "keep at least 1" in zero.stderr


def test_two_machines_stopped_mid_epoch_resume_as_one_process(cv_shards, tmp_path):
    """Two `accelerate launch --num_machines 2` (one process each, on this machine) train until a
    SIGTERM reaches machine 0's launcher; the run goes on as one process (an elastic resume)."""
    shards, _ = cv_shards
    out = tmp_path / "run"
    args = ["--config", TINY, "--train_shards", str(shards), "--output_dir", str(out), *CONSTANT,
            "--max_steps", "5", "--max_batch_size", "1", "--dataloader_num_workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "W2V_TEST_SIGNAL_AT_UPDATE": "1", "W2V_TEST_SIGNAL_TO": "parent"}
    port = str(29500 + os.getpid() % 1000)
    machines = [subprocess.Popen([ACCELERATE, "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
                                  "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                                  "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
                                  str(ROOT / "tests" / "train_with_hooks.py"), *args],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    outputs = [m.communicate(timeout=600) for m in machines]
    assert all(m.returncode != 0 for m in machines)  # preempted: neither machine finished
    assert "stopped by SIGTERM after update 2" in outputs[0][0], outputs[0][1][-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    assert json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())["world_size"] == 2
    proc = train_directly(out, shards, *CONSTANT, "--max_steps", "5", "--max_batch_size", "1",
                          "--resume_from_checkpoint", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "elastic" in proc.stdout and "2 ranks × 1 workers then, 1 × 1 now" in proc.stdout
    assert "padded seconds per update" in proc.stdout and (out / "final" / "model.safetensors").is_file()
    assert [r["update"] for r in records(out) if "loss" in r] == [1, 2, 3, 4, 5]


def test_sigterm_to_the_one_process_launcher_still_checkpoints(cv_shards, tmp_path):
    """accelerate's one-process launcher forwards no signal: killed by SIGTERM, it takes the run
    with it, which then stops after its update with a checkpoint (PR_SET_PDEATHSIG)."""
    import time

    shards, _ = cv_shards
    out = tmp_path / "one"
    proc = launch(out, shards, *CONSTANT, "--max_steps", "50", check=False,
                  hooks={"W2V_TEST_SIGNAL_AT_UPDATE": "2", "W2V_TEST_SIGNAL_TO": "parent"})
    assert proc.returncode != 0  # the launcher itself died of the signal
    deadline = time.monotonic() + 120  # the orphaned run finishes its update and writes the checkpoint
    while not (out / "checkpoints" / "step-3").is_dir() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]


# --- runs you can follow: trackers and log files ---------------------------------------------------


def test_tensorboard_gets_every_logging_step_and_goes_on_after_a_resume(cv_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shards, _ = cv_shards
    out = tmp_path / "tb"
    args = [*CONSTANT, "--report_to", "tensorboard", "--logging_steps", "1", "--eval_shards", str(shards),
            "--eval_steps", "3"]
    first = train_directly(out, shards, *args, "--max_steps", "3")
    assert first.returncode == 0 and f"logging to tensorboard: {out / 'w2v'}" in first.stdout, first.stderr[-2000:]
    assert train_directly(out, shards, *args, "--max_steps", "5", "--resume_from_checkpoint", "latest").returncode == 0
    events = EventAccumulator(str(out / "w2v"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5]  # the update counter goes on
    assert [e.step for e in events.Scalars("eval_wer")] == [3, 5] and events.Scalars("eval_loss")
    assert {"lr", "grad_norm", "audio_seconds_per_second", "padding_percent", "loader_wait_seconds",
            "skipped_nonfinite"} <= set(events.Tags()["scalars"])


def test_a_tracker_that_cannot_start_stops_the_run(cv_shards, tmp_path):
    import importlib.util

    shards, _ = cv_shards
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: the missing-package case needs a tracker that is not")
    missing = train_directly(tmp_path / "a", shards, "--report_to", "tensorboard,wandb")
    assert missing.returncode == 2 and "pip install 'w2v[wandb]'" in missing.stderr, missing.stderr[-2000:]
    assert not (tmp_path / "a" / "vocab.json").exists()  # before any data was read
    unknown = train_directly(tmp_path / "b", shards, "--report_to", "tensorbored")
    assert unknown.returncode == 2 and "choose none, all, or a comma list" in unknown.stderr


def test_logs_written_to_a_file_have_one_line_per_logging_step(cv_shards, tmp_path):
    shards, _ = cv_shards
    proc = launch(tmp_path / "log", shards, "--max_steps", "6", "--logging_steps", "2", "--max_batch_size", "2",
                  procs=2)  # stdout and stderr are pipes here, as on a cluster
    assert "\r" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("update ")]  # progress: stderr
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"] and "ETA" in lines[0]
    as_json = train_directly(tmp_path / "json", shards, "--max_steps", "2", "--logging_steps", "1",
                             "--log_format", "json")  # one process, saving its model: no bar of transformers'
    assert "\r" not in as_json.stdout + as_json.stderr
    records_printed = [json.loads(line) for line in as_json.stdout.splitlines() if line.startswith("{")]
    assert [r["update"] for r in records_printed] == [1, 2] and "\r" not in as_json.stderr
