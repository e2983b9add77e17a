#!/usr/bin/env python
"""What a rank holds under FSDP against DDP: the same run on 2 ranks, sharded or replicated.

    python benchmarks/bench_fsdp.py [--steps 8] [--hidden 768 --layers 12] [--json OUT]

Each run is `accelerate launch --multi_gpu --num_processes 2 train.py` (2 gloo ranks on the CPU, a
GPU machine's NCCL otherwise) of a wav2vec2 from scratch (--hidden, --layers: 768 and 12, wav2vec2-base's
transformer, give ~90 M parameters), 10 s of padded audio per batch, --steps updates, on the demo's espeak-ng corpus.
Reported per strategy, from the run's own metrics.jsonl (the largest rank's):

- `state MB`: the weights and AdamW state the rank holds (`model_state_mb_max_rank`);
- `planned state MB`: the same, as `--dry_run` plans it (w2v.host_memory.per_rank's weights and
  optimizer state); `planned peak MB`: with the gradients and the transient buffers (DDP's
  buckets, FSDP's gathered units) too;
- `peak RSS MB`: the rank's resident memory at its largest logging step (`host_rss_mb_max_rank`:
  everything, imports and activations included);
- `s/update`: wall seconds per update after the first (gloo on 2 CPU cores says little about a GPU
  cluster; it shows what sharding costs in communication here).

The baseline is DDP (`accelerate launch`'s DistributedDataParallel), the same run without --fsdp.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_memory import make_shards

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STRATEGIES = ("ddp", "full_shard", "shard_grad_op")


def model_config(hidden: int, layers: int) -> dict:
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    tiny["model_config"].update({"hidden_size": hidden, "num_hidden_layers": layers,
                                 "num_attention_heads": max(1, hidden // 64), "intermediate_size": 4 * hidden})
    tiny.update({"max_batch_seconds": 10, "max_duration": 10, "logging_steps": 1, "save_steps": 100000,
                 "eval_steps": 100000, "dataloader_num_workers": 1, "lr_scheduler_type": "constant"})
    return tiny


def run(strategy: str, shards: Path, config: Path, steps: int, work: Path) -> dict:
    out = work / f"run-{strategy}"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train.py"),
           "--config", str(config), "--train_shards", str(shards), "--output_dir", str(out), "--max_steps", str(steps),
           "--overwrite_output_dir", "true", *(["--fsdp", strategy] if strategy != "ddp" else [])]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if "loss" in r]
    later = updates[1:] or updates
    return {"state_mb": max(r["model_state_mb_max_rank"] for r in updates),
            "peak_rss_mb": max(r["host_rss_mb_max_rank"] for r in updates),
            "seconds_per_update": sum(1 / r["updates_per_second"] for r in later) / len(later),
            "final_loss": updates[-1]["loss"], "wall_seconds": wall}


def planned_mb(config: dict, strategy: str) -> tuple[float, float]:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from w2v.host_memory import count_parameters, per_rank

    with torch.device("meta"):
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**config["model_config"], vocab_size=32))
    plan = per_rank(count_parameters(model), 2, strategy)
    return (plan.weights + plan.optimizer) / 2**20, plan.total / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--utterances", type=int, default=300)
    p.add_argument("--work", default=None, help="keep the corpus, shards and runs here (default: a temporary folder)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-fsdp-"))
    work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(work, args.utterances)
    config = model_config(args.hidden, args.layers)
    config_file = work / "model.yaml"
    config_file.write_text(yaml.safe_dump(config))
    results = {}
    for strategy in STRATEGIES:
        state, peak = planned_mb(config, strategy)
        results[strategy] = {**run(strategy, shards, config_file, args.steps, work),
                             "planned_state_mb": state, "planned_peak_mb": peak}
    base = results["ddp"]
    print(f"\n2 ranks, a {args.hidden}×{args.layers} wav2vec2 from scratch, {args.steps} updates of 10 padded s per rank")
    print(f"{'strategy':<15} {'state MB':>9} {'vs DDP':>7} {'planned state MB':>17} {'planned peak MB':>16} "
          f"{'peak RSS MB':>12} {'vs DDP':>7} {'s/update':>9} {'final loss':>11}")
    for name, r in results.items():
        print(f"{name + (' (baseline)' if name == 'ddp' else ''):<15} {r['state_mb']:>9.1f} "
              f"{r['state_mb'] / base['state_mb']:>7.2f} {r['planned_state_mb']:>17.1f} {r['planned_peak_mb']:>16.1f} "
              f"{r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:>7.2f} {r['seconds_per_update']:>9.2f} {r['final_loss']:>11.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"hidden": args.hidden, "layers": args.layers, "steps": args.steps,
                                               "world_size": 2, "results": results}, indent=1))


if __name__ == "__main__":
    main()
