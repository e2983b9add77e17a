#!/usr/bin/env python
"""The offline demo, every stage of the product on this machine: speech → shards → model → LM → WER.

    python tools/demo.py --out runs/demo            # what `make demo` runs (FRESH=1 redoes every stage)
    python tools/demo.py --out /tmp/d --small       # a cut-down run (dozens of utterances, a few steps)

Stages: corpus (espeak-ng, tools/make_demo_corpus.py) → shards (w2v-make-shards) → train
(`accelerate launch train.py --config configs/demo.yaml`) → lm (w2v-build-lm) → tune alpha/beta
on dev and evaluate on test (w2v-evaluate) → report (OUT/report.md, OUT/report.json, OUT/curves.png).
A stage already done is reused unless FRESH=1 (or --fresh); each records its minutes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from w2v.curves import plot_curves
from w2v.lm.decode import PIPELINE_LM_MISSING, export_processor_with_lm, pipeline_lm_available

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
SIZES = {"full": {"train": 3000, "dev": 200, "test": 200}, "small": {"train": 36, "dev": 8, "test": 8}}


def run(cmd: list[str], log: Path | None = None) -> None:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"demo: stage failed ({proc.returncode}): {' '.join(cmd)}")


class Stages:
    """Runs each stage once; a marker file with its minutes makes a later run reuse it."""

    def __init__(self, out: Path, fresh: bool):
        self.out, self.fresh = out, fresh
        self.minutes: dict[str, float] = {}

    def __call__(self, name: str, fn) -> None:
        marker = self.out / f".done-{name}"
        if marker.is_file() and not self.fresh:
            self.minutes[name] = json.loads(marker.read_text())["minutes"]
            print(f"== {name}: done before ({self.minutes[name]:.1f} min), reused (FRESH=1 redoes it)", flush=True)
            return
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        fn()
        self.minutes[name] = (time.perf_counter() - start) / 60
        marker.write_text(json.dumps({"minutes": self.minutes[name]}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--small", action="store_true", help="a cut-down run for tests: dozens of utterances, few steps")
    p.add_argument("--fresh", action="store_true", default=os.environ.get("FRESH") == "1")
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--train-args", default="", help="extra train.py arguments, e.g. '--max_steps 800'")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = SIZES["small" if args.small else "full"]
    stage = Stages(out, args.fresh)
    corpus, shards, model_dir, lm = out / "corpus", out / "shards", out / "train", out / "lm"

    stage("corpus", lambda: run([PY, "tools/make_demo_corpus.py", "--out", str(corpus),
                                 *(f"--{k}={v}" for k, v in sizes.items()),
                                 *(["--lm-extra", "200"] if args.small else [])]))

    def make_all_shards() -> None:
        for split in ("train", "dev", "test"):
            run([PY, "-m", "w2v.cli.make_shards", str(corpus), "--split", split, "--out", str(shards / split),
                 "--overwrite"])
    stage("shards", make_all_shards)

    small_train = ["--max_steps", "6", "--eval_steps", "3", "--logging_steps", "2", "--warmup_steps", "2",
                   "--save_steps", "3"] if args.small else []
    stage("train", lambda: run([ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1",
                                "--mixed_precision", "no", "--dynamo_backend", "no", "train.py",
                                "--config", args.config, "--train_shards", str(shards / "train"),
                                "--eval_shards", str(shards / "dev"), "--output_dir", str(model_dir),
                                "--overwrite_output_dir",
                                *small_train, *args.train_args.split()]))
    stage("lm", lambda: run([PY, "-m", "w2v.cli.build_lm", "--text", str(corpus / "lm.txt"), "--order", "4",
                             "--out", str(lm), "--config", args.config, "--overwrite"]))
    final = model_dir / "final"
    grid = ["--alphas", "0.3", "0.6", "--betas", "0.0", "1.0"] if args.small else []
    stage("tune", lambda: run([PY, "-m", "w2v.cli.evaluate", "--model", str(final), "--shards", str(shards / "dev"),
                               "--lm", str(lm), "--tune", *grid, "--json", str(out / "eval_dev.json")]))

    def evaluate_test() -> None:
        tuned = json.loads((out / "eval_dev.json").read_text())["lm"]
        run([PY, "-m", "w2v.cli.evaluate", "--model", str(final), "--shards", str(shards / "test"), "--lm", str(lm),
             "--alpha", str(tuned["alpha"]), "--beta", str(tuned["beta"]), "--json", str(out / "eval_test.json"),
             "--errors", str(out / "test_errors.jsonl")])
    stage("test", evaluate_test)

    def export() -> None:  # pipeline("automatic-speech-recognition", model=final) now decodes with the LM
        if not pipeline_lm_available():
            print(f"export skipped: {PIPELINE_LM_MISSING}")
            return
        tuned = json.loads((out / "eval_dev.json").read_text())["lm"]
        folder = export_processor_with_lm(final, lm, tuned["alpha"], tuned["beta"])
        print(f"exported the LM and its tuned weights into {folder}")
    stage("export", export)
    report = write_report(out, stage.minutes)
    print(report)
    return 0


def write_report(out: Path, minutes: dict[str, float]) -> str:
    test = json.loads((out / "eval_test.json").read_text())
    dev = json.loads((out / "eval_dev.json").read_text())
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    train_index = json.loads((out / "shards" / "train" / "index.json").read_text())
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_wer" in r]
    padding = sum(r["padding_percent"] for r in losses) / max(len(losses), 1)
    summary = {
        "greedy": {"wer": test["greedy"]["wer"], "cer": test["greedy"]["cer"]},
        "lm": {"wer": test["lm"]["wer"], "cer": test["lm"]["cer"], "alpha": test["lm"]["alpha"],
               "beta": test["lm"]["beta"]},
        "dev": {"greedy": dev["greedy"], "lm": dev["lm"]},
        "lm_relative_wer_reduction": 1 - test["lm"]["wer"] / test["greedy"]["wer"] if test["greedy"]["wer"] else 0.0,
        "minutes": {**minutes, "total": sum(minutes.values())},
        "train_hours": train_index["total_seconds"] / 3600,
        "train_utterances": train_index["num_samples"],
        "test_utterances": test["utterances"],
        "updates": losses[-1]["update"] if losses else 0,
        "padding_percent": padding,
        "real_time_factor": test.get("real_time_factor"),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    plot_curves(losses, evals, out / "curves.png")
    g, lm = summary["greedy"], summary["lm"]
    md = "\n".join([
        "# w2v demo report",
        "",
        f"{summary['train_utterances']} training utterances ({summary['train_hours']:.2f} h of espeak-ng speech), "
        f"{summary['updates']} updates, padding {padding:.1f}% of batch frames; test: {summary['test_utterances']} "
        "utterances of sentences never heard in training.",
        "",
        "| decoding (test) | WER | CER |",
        "|---|---|---|",
        f"| greedy | {100 * g['wer']:.1f}% | {100 * g['cer']:.1f}% |",
        f"| 4-gram LM (alpha {lm['alpha']}, beta {lm['beta']}, tuned on dev) | {100 * lm['wer']:.1f}% | "
        f"{100 * lm['cer']:.1f}% |",
        "",
        f"The LM lowers WER by {100 * summary['lm_relative_wer_reduction']:.0f}% relative.",
        "",
        "| stage | minutes |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in summary["minutes"].items()),
        "",
        "![loss and WER curves](curves.png)",
    ])
    (out / "report.md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    sys.exit(main())
