#!/usr/bin/env python
"""Training throughput: train.py vs the Hugging Face Trainer recipe, same model, same shards, same memory.

    python benchmarks/bench_train.py [--steps 100] [--json OUT]                      # CPU, demo-size model
    python benchmarks/bench_train.py --device cuda --model base --steps 200 --json OUT  # a GPU machine

- `ours`: `train.py` (streaming loader, duration buckets capped at --max-batch-seconds of padded audio,
  token-normalised CTC), fp32 on CPU / fp16 on CUDA.
- `hf_trainer`: the recipe of transformers' run_speech_recognition_ctc.py: utterances decoded and
  normalised by `Wav2Vec2FeatureExtractor` up front (as its `datasets.map` does), `Trainer` with
  `train_sampling_strategy="group_by_length"` and `DataCollatorCTCWithPadding`. Same memory budget:
  its batch size is the largest whose worst case (the longest utterances together) fits the same
  padded-seconds cap, which is what a user must pick to never OOM.

Both run --steps optimizer updates, --repeats times, interleaved (ours, HF, ours, HF, ...); the
median run of each is reported. Throughput, for both: the audio seconds of the updates after the
first 10% divided by the wall time they took (start-up, compilation and the first buffer fill
excluded); the Trainer's audio is counted in its training step, as ours is in its update. Peak memory
is reported on CUDA. The corpus is espeak-ng speech of mixed lengths (demo sentences), cached in --work.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from baselines import DataCollatorCTCWithPadding

from w2v.shards.index import read_index
from w2v.shards.tar import iter_tar_samples
from w2v.text import Vocabulary

ROOT = Path(__file__).resolve().parent.parent

BASE = {  # wav2vec2-base's shape (95 M parameters), trained from scratch here: a speed test only
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "feat_extract_norm": "group", "do_stable_layer_norm": False, "conv_bias": False,
}


def make_data(work: Path, utterances: int) -> Path:
    shards = work / f"shards-{utterances}"
    if (shards / "index.json").is_file():
        return shards
    corpus = work / "corpus"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_demo_corpus.py"), "--out", str(corpus), "--train",
                    str(utterances), "--dev", "1", "--test", "1", "--lm-extra", "0"], check=True)
    subprocess.run([sys.executable, "-m", "w2v.cli.make_shards", str(corpus), "--split", "train",
                    "--out", str(shards), "--no-progress"], check=True)
    return shards


def model_config(name: str) -> dict:
    if name == "base":
        return BASE
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["model_config"]


def run_ours(shards: Path, work: Path, args) -> dict:
    cfg = {"model_config": model_config(args.model), "freeze_feature_encoder": False, "mask_time_prob": 0.05,
           "learning_rate": 1e-4, "lr_scheduler_type": "linear", "warmup_steps": 10,
           "max_batch_seconds": args.max_batch_seconds, "min_duration": 0.0, "max_duration": 30.0,
           "dataloader_num_workers": 0 if args.device == "cpu" else 4, "logging_steps": max(1, args.steps // 20),
           "eval_steps": 10**9, "save_steps": 10**9, "max_steps": args.steps,
           "mixed_precision": "fp16" if args.device == "cuda" else "no"}
    config_file = work / "ours.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    out = work / "ours-run"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(config_file), "--train_shards",
                    str(shards), "--output_dir", str(out)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the log windows after the first 10% of the updates: their audio over their time (a ratio of
    # totals, as for the Trainer below, not a mean of per-window rates)
    logged = [r for r in records if "audio_seconds_per_second" in r]
    starts = [0] + [r["update"] for r in logged[:-1]]
    steady = [r for r, start in zip(logged, starts, strict=True) if start >= args.steps // 10]
    updates = np.array([r["update"] - start for r, start in zip(logged, starts, strict=True)
                        if start >= args.steps // 10])
    seconds = updates / np.array([r["updates_per_second"] for r in steady])
    audio = seconds * np.array([r["audio_seconds_per_second"] for r in steady])
    padding = float(np.average([r["padding_percent"] for r in steady], weights=audio))
    result = {"audio_seconds_per_second": float(audio.sum() / seconds.sum()), "padding_percent": padding,
              "wall_seconds": wall, "steps_per_second": float(updates.sum() / seconds.sum())}
    if "peak_memory_gib" in records[-1]:
        result["peak_memory_gib"] = records[-1]["peak_memory_gib"]
    return result


class CountingCollator(DataCollatorCTCWithPadding):
    """The HF example's collator; each batch also says how much audio it holds, which the trainer
    below counts when it trains on the batch (not when a batch is collated: the loader may
    prefetch batches before the clock starts)."""

    def __call__(self, features):
        batch = super().__call__(features)
        batch["audio_seconds"] = sum(len(f["input_values"]) for f in features) / 16000
        return batch


def run_hf(shards: Path, work: Path, args) -> dict:
    from transformers import (
        Trainer,
        TrainerCallback,
        TrainingArguments,
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    index = read_index(shards)
    vocab = Vocabulary.build(t for s in index["shards"] for t in s["texts"])
    vocab.save(work / "vocab.json")
    tokenizer = Wav2Vec2CTCTokenizer(str(work / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    mc = model_config(args.model)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=mc.get("feat_extract_norm") == "layer")
    processor = Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)
    features, durations = [], []
    for shard in index["shards"]:  # the example's datasets.map: decode, extract, tokenise up front
        for _, parts in iter_tar_samples(shards / shard["name"]):
            wave, sr = sf.read(io.BytesIO(parts["flac"]), dtype="float32")
            text = json.loads(parts["json"])["text"]
            features.append({"input_values": extractor(wave, sampling_rate=sr).input_values[0],
                             "labels": tokenizer(vocab.normalizer(text)).input_ids})
            durations.append(len(wave) / sr)
    batch_size = max(1, int(args.max_batch_seconds // max(durations)))  # worst case must fit the cap
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**mc, vocab_size=len(vocab), pad_token_id=vocab.pad_id,
                                          ctc_loss_reduction="mean", ctc_zero_infinity=True, mask_time_prob=0.05))
    seen = {"audio": 0.0, "start": None}

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, *rest, **kwargs):
            audio = inputs.pop("audio_seconds")
            if seen["start"] is not None:
                seen["audio"] += audio
            return super().training_step(model, inputs, *rest, **kwargs)

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.steps // 10 and seen["start"] is None:
                seen["start"] = time.perf_counter()

    training = TrainingArguments(
        output_dir=str(work / "hf-run"), per_device_train_batch_size=batch_size, max_steps=args.steps,
        learning_rate=1e-4, warmup_steps=10, train_sampling_strategy="group_by_length", logging_steps=10**9,
        save_strategy="no", report_to=[], dataloader_num_workers=0 if args.device == "cpu" else 4,
        fp16=args.device == "cuda", use_cpu=args.device == "cpu", disable_tqdm=True)
    trainer = CountingTrainer(model=model, args=training, train_dataset=features, data_collator=CountingCollator(processor),
                      processing_class=extractor, callbacks=[Clock()])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    result = {"audio_seconds_per_second": seen["audio"] / (end - seen["start"]), "batch_size": batch_size,
              "wall_seconds": end - start, "longest_utterance": float(max(durations)),
              "steps_per_second": (args.steps - args.steps // 10) / (end - seen["start"])}
    if args.device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput, and every run's throughput beside it."""
    ranked = sorted(runs, key=lambda r: r["audio_seconds_per_second"])
    return {**ranked[len(ranked) // 2], "runs_audio_seconds_per_second": [r["audio_seconds_per_second"] for r in runs]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--utterances", type=int, default=600)
    p.add_argument("--model", default="demo", help="demo (3.6 M) | tiny | base (wav2vec2-base shape)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-batch-seconds", type=float, default=40.0)
    p.add_argument("--repeats", type=int, default=3, help="runs of each path, interleaved; the median is reported")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "w2v-bench-train"),
                   help="cache of the corpus and shards (make them here and carry them to a machine without espeak-ng)")
    p.add_argument("--json", default=None)
    p.add_argument("--prepare-only", action="store_true", help="make the corpus and shards in --work, then stop")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shards = make_data(work, args.utterances)
    if args.prepare_only:
        print(f"shards ready: {shards}")
        return 0
    runs: dict[str, list[dict]] = {"ours": [], "hf_trainer": []}
    for _ in range(args.repeats):  # interleaved: ours, HF, ours, HF, ...
        runs["ours"].append(run_ours(shards, work, args))
        runs["hf_trainer"].append(run_hf(shards, work, args))
    results = {name: median_run(measured) for name, measured in runs.items()}
    results["repeats"] = args.repeats
    ours, hf = results["ours"]["audio_seconds_per_second"], results["hf_trainer"]["audio_seconds_per_second"]
    print(f"\ntraining, {args.model} model, {args.device}, {args.steps} updates, cap {args.max_batch_seconds:g} "
          f"padded seconds per batch; median of {args.repeats} interleaved runs each:")
    print(f"{'path':12} {'audio-s/s':>10} {'× HF':>6} {'steps/s':>8} {'peak GiB':>9}  notes")
    for name, r, note in (
        ("ours", results["ours"], f"padding {results['ours']['padding_percent']:.1f}%"),
        ("hf_trainer", results["hf_trainer"], f"batch size {results['hf_trainer']['batch_size']} (longest "
                                               f"utterance {results['hf_trainer']['longest_utterance']:.1f} s)"),
    ):
        peak = f"{r['peak_memory_gib']:9.2f}" if "peak_memory_gib" in r else f"{'-':>9}"
        print(f"{name:12} {r['audio_seconds_per_second']:10.1f} {r['audio_seconds_per_second'] / hf:6.2f} "
              f"{r['steps_per_second']:8.2f} {peak}  {note}")
    results["ours_vs_hf"] = ours / hf
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
