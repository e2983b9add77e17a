#!/usr/bin/env python
"""Host memory of a training rank: train.py against the Hugging Face Trainer recipe, same model and cap.

    python benchmarks/bench_memory.py [--utterances 3000 30000] [--workers 0 2] [--steps 300] [--json OUT]

Each run trains the demo model (configs/demo.yaml: 3.6 M parameters, 40 s of padded audio per
batch) for --steps updates in a process of its own, while this script reads /proc once a second:
the training process's resident memory (RSS, and its anonymous part: what the process itself
allocated, not shared libraries or page cache) and each DataLoader worker's private pages (what it
holds alone, not what it still shares with its rank since the fork). Reported per run: the peak,
and the RSS after 10% of the updates, after 100 and at the end (steady: the end against 100).

- `ours`: `train.py --config configs/demo.yaml` on shards of N utterances, `dataloader_num_workers`
  0 or 2, with tcmalloc (w2v/host_memory.py).
- `ours_glibc`: the same with glibc's allocator (`W2V_ALLOCATOR=system`), where tcmalloc is not
  installed.
- `hf_trainer`: the recipe of transformers' run_speech_recognition_ctc.py: the corpus decoded and
  turned into features by `datasets.map` into its Arrow cache (memory-mapped, as the example does),
  `Trainer` with `group_by_length`, `DataCollatorCTCWithPadding`, the batch size that fits the same
  padded-seconds cap in the worst case, the same worker count.

The corpus: a few hundred espeak-ng sentences (tools/make_demo_corpus.py), repeated under distinct
keys to N utterances and sharded once, cached in --work.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DISTINCT = 300


def make_shards(work: Path, utterances: int) -> Path:
    out = work / f"shards-{utterances}"
    if (out / "index.json").is_file():
        return out
    corpus = work / "corpus"
    if not (corpus / "train.tsv").is_file():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_demo_corpus.py"), "--out", str(corpus), "--train",
                        str(DISTINCT), "--dev", "1", "--test", "1", "--lm-extra", "0"], check=True)
    rows = list(csv.DictReader(open(corpus / "train.tsv", encoding="utf-8"), delimiter="\t"))
    manifest = work / f"manifest-{utterances}.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(corpus / "clips" / rows[i % len(rows)]["path"]),
                                            "text": rows[i % len(rows)]["sentence"], "id": f"u{i:07d}"}) + "\n"
                                for i in range(utterances)))
    subprocess.run([sys.executable, "-m", "w2v.cli.make_shards", str(manifest), "--out", str(out),
                    "--max-shard-samples", "500", "--no-progress", "--overwrite"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return out


def memory_mb(pid: int) -> dict:
    """VmRSS and RssAnon of a process, and its private pages (what it alone holds: for a forked
    worker, not the pages it still shares with its rank), in MB; empty once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    out[key] = int(value.split()[0]) / 1024
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("Private_Clean", "Private_Dirty"):
                    out["private"] = out.get("private", 0.0) + int(value.split()[0]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                kids += [int(c) for c in handle.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def watch(cmd: list[str], progress: Path, env: dict) -> list[dict]:
    """Run `cmd`, reading its memory (and its children's) once a second; `progress` is a file whose
    last line says the update reached (metrics.jsonl, or the HF child's own)."""
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child must never block on it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    samples = []
    while proc.poll() is None:
        update = 0
        if progress.is_file():
            lines = [line for line in progress.read_text().splitlines() if '"update"' in line]
            update = json.loads(lines[-1])["update"] if lines else 0
        main = memory_mb(proc.pid)
        workers = [memory_mb(k) for k in children(proc.pid)]
        if main:
            samples.append({"update": update, "rss": main.get("VmRSS", 0), "anon": main.get("RssAnon", 0),
                            "workers_rss": [w.get("VmRSS", 0) for w in workers if w],
                            "workers_private": [w.get("private", 0) for w in workers if w]})
        time.sleep(1.0)
    if proc.returncode != 0:
        log.seek(0)
        raise SystemExit(f"{' '.join(cmd[:3])} … failed:\n{log.read()[-3000:]}")
    log.close()
    return samples


def summary(samples: list[dict], steps: int) -> dict:
    def at(update: int) -> dict:
        return next((s for s in samples if s["update"] >= update), samples[-1])

    training = [s for s in samples if s["update"] >= 1] or samples
    early, hundred, end = at(max(1, steps // 10)), at(100), training[-1]
    workers = [w for s in samples for w in s["workers_private"]]
    return {"peak_rss_mb": max(s["rss"] for s in samples), "peak_anon_mb": max(s["anon"] for s in samples),
            "rss_early_mb": early["rss"], "rss_at_100_mb": hundred["rss"], "rss_end_mb": end["rss"],
            "anon_at_100_mb": hundred["anon"], "anon_end_mb": end["anon"],
            "end_vs_100": end["rss"] / hundred["rss"] if hundred["rss"] else float("nan"),
            "worker_peak_private_mb": max(workers) if workers else 0.0,
            "worker_peak_rss_mb": max((w for s in samples for w in s["workers_rss"]), default=0.0)}


def run_ours(shards: Path, workers: int, steps: int, work: Path, allocator: str = "tcmalloc") -> dict:
    out = work / f"ours-{shards.name}-{workers}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "demo.yaml"),
           "--train_shards", str(shards), "--output_dir", str(out), "--max_steps", str(steps),
           "--dataloader_num_workers", str(workers), "--logging_steps", "10", "--eval_steps", str(10**9),
           "--save_steps", str(10**9), "--warmup_steps", "10"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "W2V_ALLOCATOR": allocator}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return summary(watch(cmd, out / "metrics.jsonl", env), steps)


def run_hf(shards: Path, workers: int, steps: int, work: Path) -> dict:
    progress = work / f"hf-{shards.name}-{workers}.jsonl"
    progress.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--hf-child", str(shards), str(workers), str(steps), str(progress), str(work)]
    return summary(watch(cmd, progress, {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"}), steps)


def hf_child(shards: Path, workers: int, steps: int, progress: Path, work: Path) -> None:
    """The Hugging Face recipe, in this process (its memory is what the parent reads)."""
    import io

    import datasets
    import soundfile as sf
    import yaml
    from baselines import DataCollatorCTCWithPadding
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

    from w2v.shards.index import read_index
    from w2v.shards.tar import iter_tar_samples
    from w2v.text import Vocabulary

    index = read_index(shards)
    vocab = Vocabulary.build(t for s in index["shards"] for t in s["texts"])
    vocab.save(work / "hf-vocab.json")
    tokenizer = Wav2Vec2CTCTokenizer(str(work / "hf-vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    mc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["model_config"]
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    processor = Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)

    def rows():
        for shard in index["shards"]:
            for _, parts in iter_tar_samples(shards / shard["name"]):
                wave, _ = sf.read(io.BytesIO(parts["flac"]), dtype="float32")
                yield {"audio": wave, "text": json.loads(parts["json"])["text"]}

    def prepare(row):  # the example's prepare_dataset, through datasets.map into its Arrow cache
        row["input_values"] = extractor(row["audio"], sampling_rate=16000).input_values[0]
        row["input_length"] = len(row["input_values"])
        row["labels"] = tokenizer(vocab.normalizer(row["text"])).input_ids
        return row

    cache = work / f"hf-cache-{shards.name}"
    raw = datasets.Dataset.from_generator(rows, cache_dir=str(cache))
    data = raw.map(prepare, remove_columns=["audio", "text"], cache_file_name=str(cache / "features.arrow"))
    longest = max(data["input_length"]) / 16000
    batch_size = max(1, int(40.0 // longest))
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**mc, vocab_size=len(vocab), pad_token_id=vocab.pad_id,
                                          ctc_loss_reduction="mean", ctc_zero_infinity=True, mask_time_prob=0.05))

    class Progress(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step % 10 == 0:
                with open(progress, "a") as handle:
                    handle.write(json.dumps({"update": state.global_step}) + "\n")

    training = TrainingArguments(output_dir=str(work / "hf-run"), per_device_train_batch_size=batch_size,
                                 max_steps=steps, learning_rate=1e-4, warmup_steps=10, train_sampling_strategy="group_by_length",
                                 length_column_name="input_length", logging_steps=10**9, save_strategy="no",
                                 report_to=[], dataloader_num_workers=workers, use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=training, train_dataset=data, data_collator=DataCollatorCTCWithPadding(processor),
            processing_class=extractor, callbacks=[Progress()]).train()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--hf-child":
        shards, workers, steps, progress, work = sys.argv[2:7]
        hf_child(Path(shards), int(workers), int(steps), Path(progress), Path(work))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, nargs="+", default=[3000, 30000])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--paths", nargs="+", default=["ours", "ours_glibc", "hf_trainer"],
                   choices=["ours", "ours_glibc", "hf_trainer"])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "w2v-bench-memory"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for utterances in args.utterances:
        shards = make_shards(work, utterances)
        for workers in args.workers:
            for path in args.paths:
                if path == "hf_trainer":
                    run = run_hf(shards, workers, args.steps, work)
                else:
                    run = run_ours(shards, workers, args.steps, work, "system" if path == "ours_glibc" else "tcmalloc")
                results.append({"path": path, "utterances": utterances, "workers": workers, **run})
                print(json.dumps(results[-1]), flush=True)
    print(f"\nHost memory of a training rank, demo model, 40 s padded cap, {args.steps} updates (MB):")
    print(f"{'path':11} {'utts':>6} {'workers':>7} {'peak RSS':>9} {'RSS@100':>8} {'RSS end':>8} {'end/100':>8} "
          f"{'anon end':>9} {'worker private':>15}")
    for r in results:
        print(f"{r['path']:11} {r['utterances']:>6} {r['workers']:>7} {r['peak_rss_mb']:9.0f} {r['rss_at_100_mb']:8.0f} "
              f"{r['rss_end_mb']:8.0f} {r['end_vs_100']:8.2f} {r['anon_end_mb']:9.0f} {r['worker_peak_private_mb']:15.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"steps": args.steps, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
