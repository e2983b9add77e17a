#!/usr/bin/env python
"""How long does w2v-merge-shards take for a corpus sharded by many machines, and in what memory?

    python benchmarks/bench_merge.py [--parts 1000] [--utterances 10000000] [--json OUT]

Writes a synthetic folder of parts as `w2v-make-shards --num-parts N --part K` leaves it (the plan,
each part's index with keys, durations and Common-Voice-like texts, skipped lists and completion
markers; no audio, which the merge never reads) and times `w2v-merge-shards` on it in a
subprocess, with its peak RSS from GNU time. The baseline is reading every part's index with
`json.load` and writing one `json.dump` of the whole: what a merge that holds the corpus in memory
costs.
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her one all we there been if more when will would who so no").split()


def write_parts(folder: Path, parts: int, utterances: int, shard_samples: int = 1000) -> None:
    rng = random.Random(0)
    options = {"codec": "flac", "resampler": "soxr", "device": "cpu", "min_duration": None, "max_duration": None,
               "max_shard_bytes": 268435456, "max_shard_samples": shard_samples}
    source = {"format": "manifest", "path": "/corpus", "table": "/corpus/all.jsonl"}
    plan = {"format": "w2v-parts/1", "num_parts": parts, "inputs": utterances, "prefix": "big",
            "source": source, "options": options}
    (folder / "parts.json").write_text(json.dumps(plan))
    (folder / "parts").mkdir()
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) for _ in range(5000)]
    for k in range(parts):
        n = (k + 1) * utterances // parts - k * utterances // parts
        shards = []
        for s in range(0, n, shard_samples):
            m = min(shard_samples, n - s)
            keys = [f"clip_{k:05d}_{s + i:07d}" for i in range(m)]
            durations = [round(rng.uniform(1.0, 10.0), 6) for _ in range(m)]
            shards.append({"name": f"big-p{k:05d}-{s // shard_samples:06d}.tar", "num_samples": m,
                           "bytes": 20000 * m, "seconds": round(sum(durations), 3), "keys": keys,
                           "durations": durations, "texts": rng.choices(texts, k=m)})
        index = {"format": "w2v-shards/1", "sample_rate": 16000, "num_shards": len(shards), "num_samples": n,
                 "total_seconds": round(sum(s["seconds"] for s in shards), 3), "name": "big", "codec": "flac",
                 "inputs": n + 1, "skipped": {"decode_error": 1}, "source": source, "options": options,
                 "shards": shards}
        (folder / "parts" / f"p{k:05d}.index.json").write_text(json.dumps(index))
        (folder / "parts" / f"p{k:05d}.skipped.jsonl").write_text(
            json.dumps({"key": f"bad{k}", "source": "x", "reason": "decode_error", "detail": ""}) + "\n")
        (folder / "parts" / f"p{k:05d}.done.json").write_text("{}")


def timed(cmd: list[str]) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".time") as usage:
        start = time.perf_counter()
        subprocess.run([GNU_TIME, "-f", "%M", "-o", usage.name, *cmd] if GNU_TIME else cmd, check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        rss = int(usage.read().split()[-1]) / 1024 if GNU_TIME else float("nan")
    return {"seconds": seconds, "peak_rss_mb": rss}


NAIVE = """
import json, sys, pathlib
folder = pathlib.Path(sys.argv[1])
indexes = [json.loads(p.read_text()) for p in sorted((folder / "parts").glob("p*.index.json"))]
merged = {**indexes[0], "shards": [s for i in indexes for s in i["shards"]]}
(folder / "naive.json").write_text(json.dumps(merged))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=int, default=1000)
    p.add_argument("--utterances", type=int, default=10_000_000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_merge.") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_parts(folder, args.parts, args.utterances)
        size = sum(f.stat().st_size for f in (folder / "parts").glob("*.index.json"))
        print(f"{args.parts} parts, {args.utterances:,} utterances, {size / 1e6:.0f} MB of part indexes "
              f"(written in {time.perf_counter() - start:.0f} s)")
        ours = timed([sys.executable, "-m", "w2v.cli.merge_shards", str(folder)])
        naive = timed([sys.executable, "-c", NAIVE, str(folder)])
        merged = json.loads((folder / "index.json").read_text())
        assert merged["num_samples"] == args.utterances and merged["inputs"] == args.utterances + args.parts
    print(f"{'merge':24}{'seconds':>9}{'peak RSS MB':>13}")
    for name, row in (("w2v-merge-shards", ours), ("json.load all + json.dump", naive)):
        print(f"{name:24}{row['seconds']:9.1f}{row['peak_rss_mb']:13.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"parts": args.parts, "utterances": args.utterances, "ours": ours,
                                         "naive": naive}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
