"""What a new user meets in the first hour: no traceback, no silent surprise, one way to say "did you mean"."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_tiny_model, run_command
from tests.test_train import ACCELERATE, CONSTANT, TINY, records, train_directly

VOCAB = {"[PAD]": 0, "[UNK]": 1, "|": 2, "a": 3, "b": 4, "e": 5, "t": 6, "h": 7}


@pytest.fixture(scope="module")
def model_and_lm(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("model_lm")
    (root / "model").mkdir()
    make_tiny_model(root / "model", VOCAB)
    (root / "lm.txt").write_text("the a b\nbe the\nthe bath\n")
    run_command("w2v-build-lm", "--text", root / "lm.txt", "--order", "2", "--out", root / "lm", check=True)
    return root / "model", root / "lm"


def test_export_makes_the_parents_of_its_out_folder(model_and_lm, tmp_path):
    model, lm = model_and_lm
    out = tmp_path / "new" / "parent" / "exported"
    proc = run_command("w2v-export", model, "--lm", lm, "--alpha", "0.5", "--beta", "1", "--out", out)
    assert proc.returncode == 0 and (out / "config.json").is_file() and (out / "language_model").is_dir(), proc.stderr
    assert "Traceback" not in proc.stderr and "deprecated" not in proc.stderr  # no notice to act on


def test_evaluate_checks_its_paths_before_loading_anything(model_and_lm, tmp_path):
    model, _ = model_and_lm
    proc = run_command("w2v-evaluate", "--model", tmp_path / "no_model", "--shards", tmp_path / "no_shards")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --shards {tmp_path / 'no_shards'}: {tmp_path / 'no_shards'}: "
                                                "no such file or folder"]  # the shards, before the model


def test_evaluate_names_the_models_inside_a_run_folder(cv_shards, tmp_path):
    shards, _ = cv_shards
    run = tmp_path / "run"
    assert train_directly(run, shards, "--max_steps", "1").returncode == 0
    proc = run_command("w2v-evaluate", "--model", run, "--shards", shards)
    assert proc.returncode == 2 and f"give {run / 'final'}" in proc.stderr and "Traceback" not in proc.stderr


def test_lm_decoding_says_nothing_the_user_cannot_act_on(model_and_lm, cv_shards, tmp_path):
    model, lm = model_and_lm
    shards, _ = cv_shards
    proc = run_command("w2v-evaluate", "--model", model, "--shards", shards, "--lm", lm, "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    for noise in ("unigrams passed as vocabulary", "Loading weights", "deprecated"):
        assert noise not in proc.stderr, noise


def test_flags_are_spelled_out_and_typos_are_named(tmp_path):
    for command, args, said in (
            ("w2v-make-shards", ["x", "--out", "o", "--text-colunm", "t"], "unknown flag --text-colunm (did you mean "
                                                                           "--text-column?)"),
            ("w2v-make-shards", ["x", "--out", "o", "--audio-colum", "t"], "unknown flag --audio-colum (did you mean "
                                                                           "--audio-column?)"),
            ("w2v-evaluate", ["--model", "m", "--shards", "s", "--alhpa", "1"], "unknown flag --alhpa (did you mean "
                                                                                 "--alpha?)"),
            ("w2v-transcribe", ["m", "a.wav", "--beam-widht", "3"], "did you mean --beam-width?")):
        proc = run_command(command, *args)
        assert proc.returncode == 2 and said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--train_shards", "x", "--learning_rat", "1"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--learning_rat (did you mean --learning_rate?)" in proc.stderr


def test_a_dry_run_of_parts_needs_no_part(commonvoice, tmp_path):
    src, _ = commonvoice
    proc = run_command("w2v-make-shards", src / "train.tsv", "--out", tmp_path / "o", "--num-parts", "2", "--dry-run")
    assert proc.returncode == 0 and "part 0:" in proc.stdout and "part 1:" in proc.stdout, proc.stderr


def test_a_merge_names_the_setting_a_part_differs_in(commonvoice, tmp_path):
    src, _ = commonvoice
    out = tmp_path / "parts"
    run_command("w2v-make-shards", src / "train.tsv", "--out", out, "--num-parts", "2", "--part", "0", check=True)
    proc = run_command("w2v-make-shards", src / "train.tsv", "--out", out, "--num-parts", "2", "--part", "1",
                       "--codec", "wav")
    assert proc.returncode == 2 and "options.codec: 'flac' in the plan, 'wav' in part 1" in proc.stderr
    assert "'resampler'" not in proc.stderr  # only what differs


def test_build_lm_names_a_missing_shard_folder(tmp_path):
    proc = run_command("w2v-build-lm", "--shards", tmp_path / "typo", "--out", tmp_path / "lm")
    assert proc.returncode == 2 and f"{tmp_path / 'typo'}: no such file or folder" in proc.stderr


def test_inspect_shards_shows_the_vocabulary_training_will_use(cv_shards, tmp_path):
    shards, _ = cv_shards
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    proc = run_command("w2v-inspect-shards", shards, "--out", tmp_path / "report", "--n", "2", "--vocab",
                       tmp_path / "vocab.json")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("training vocabulary"))
    letters = line.split("characters: ")[1]
    assert letters == letters.lower() and "." not in letters and "'" in letters  # normalised as training does
    outside = next(x for x in proc.stdout.splitlines() if x.startswith("outside"))
    assert "'o'×" in outside and "'a'" not in outside
    assert "What training uses" in (tmp_path / "report" / "index.html").read_text()


def test_ctrl_c_stops_with_a_checkpoint_and_twice_at_once(cv_shards, tmp_path):
    shards, _ = cv_shards
    once = train_directly(tmp_path / "once", shards, *CONSTANT, "--max_steps", "8",
                          hooks={"W2V_TEST_SIGNAL_AT_UPDATE": "2", "W2V_TEST_SIGNAL": "SIGINT"})
    assert once.returncode == 75 and "Ctrl-C: finishing this update" in once.stderr, once.stderr[-2000:]
    assert "Traceback" not in once.stderr and "--resume_from_checkpoint auto" in once.stdout
    assert sorted(p.name for p in (tmp_path / "once" / "checkpoints").iterdir()) == ["step-3"]
    twice = train_directly(tmp_path / "twice", shards, *CONSTANT, "--max_steps", "8",
                           hooks={"W2V_TEST_SIGNAL_AT_UPDATE": "2", "W2V_TEST_SIGNAL": "SIGINT",
                                  "W2V_TEST_SIGNAL_TIMES": "2"})
    assert twice.returncode == 130 and "interrupted" in twice.stderr and "Traceback" not in twice.stderr
    # a run with metrics but no checkpoint: the refusal suggests what works
    again = train_directly(tmp_path / "twice", shards, *CONSTANT, "--max_steps", "8")
    assert again.returncode == 2 and "no checkpoint to continue from" in again.stderr
    assert "--resume_from_checkpoint auto" in again.stderr and "latest" not in again.stderr


def test_schedule_changes_on_resume_are_said_and_what_applies(cv_shards, tmp_path):
    shards, _ = cv_shards
    out = tmp_path / "run"
    args = ["--lr_scheduler_type", "linear", "--warmup_steps", "1", "--max_batch_size", "2"]
    assert train_directly(out, shards, *args, "--max_steps", "2", "--learning_rate", "0.001").returncode == 0
    proc = train_directly(out, shards, *args, "--max_steps", "4", "--learning_rate", "0.002",
                          "--resume_from_checkpoint", "latest")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max_steps changed since the checkpoint: 2 then, 4 now" in proc.stderr
    assert "learning_rate changed since the checkpoint: 0.001 then, 0.002 now; the checkpoint's rate goes on" in proc.stderr
    peak = max(r["lr"] for r in records(out) if "lr" in r)
    assert peak == pytest.approx(0.001, rel=1e-6)  # what the warning says applies, does
    dry = train_directly(tmp_path / "dry", shards, "--max_steps", "3", "--warmup_steps", "5", "--dry_run", "true")
    assert dry.returncode == 0 and "warmup_steps 5 >= max_steps 3: the whole run is warm-up" in dry.stderr


def test_two_cpu_processes_asked_of_the_one_process_launcher_are_named(cv_shards, tmp_path):
    shards, _ = cv_shards
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    proc = subprocess.run([ACCELERATE, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", "--config", TINY,
                           "--train_shards", str(shards), "--output_dir", str(tmp_path / "o"), "--dry_run", "true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "starts ONE process" in proc.stderr and "--multi_gpu --num_processes N" in proc.stderr


def test_training_draws_its_curves(cv_shards, tmp_path):
    shards, _ = cv_shards
    out = tmp_path / "run"
    assert train_directly(out, shards, "--max_steps", "2", "--eval_steps", "1", "--eval_shards", str(shards),
                          "--logging_steps", "1").returncode == 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (out / "curves.png").unlink()
    proc = subprocess.run([sys.executable, "-m", "w2v.curves", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and (out / "curves.png").is_file()
    proc = subprocess.run([sys.executable, "-m", "w2v.curves", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "metrics.jsonl: no such file" in proc.stderr
