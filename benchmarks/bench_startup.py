#!/usr/bin/env python
"""Where a training rank's start-up goes before its first batch: imports, the epoch plan, the
decoding kernels, the first batch; on a machine's first run (an empty numba cache) and after.

    python benchmarks/bench_startup.py [--utterances 600] [--workers 0 2] [--json OUT]

Each figure comes from a fresh process, as a rank starts: `cold` with an empty NUMBA_CACHE_DIR
(numba compiles every kernel), `warm` with the cache that run filled. The baseline is the same
process's first batch when nothing is prepared before it (what a training loop counted as loader
wait before the kernels were loaded up front). Shards of espeak speech are made in --work once.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = r"""
import sys, time
t0 = time.perf_counter()
import train  # noqa: F401  (what a rank imports)
from w2v.data.labels import vocabulary_from_shards
from w2v.data.loader import LoaderConfig, SpeechLoader, load_kernels
from w2v.shards.spec import select_shards
t1 = time.perf_counter()
shards = select_shards(sys.argv[1])
loader = SpeechLoader(shards, LoaderConfig(max_batch_seconds=40, num_workers=int(sys.argv[2])),
                      vocab=vocabulary_from_shards(shards), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                      conv_stride=(5, 2, 2, 2, 2, 2, 2))
len(loader)
t2 = time.perf_counter()
kernels = load_kernels() if sys.argv[3] == "prepared" else 0.0
t3 = time.perf_counter()
next(iter(loader))
t4 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1} {kernels} {t4 - t3}")
"""


def make_shards(work: Path, utterances: int) -> Path:
    out = work / f"shards-{utterances}"
    if (out / "index.json").is_file():
        return out
    sys.path.insert(0, str(ROOT))
    from tests.corpora import SENTENCES, VOICES
    from w2v.synth import speak

    audio = work / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    distinct = []
    for i in range(12):
        path = audio / f"d{i}.wav"
        if not path.is_file():
            speak(SENTENCES[i % len(SENTENCES)], path, VOICES[i % len(VOICES)], 150 + 10 * (i % 4))
        distinct.append(path)
    rows = [{"audio": str(distinct[i % len(distinct)]), "text": SENTENCES[i % len(SENTENCES)], "id": f"u{i:05d}"}
            for i in range(utterances)]
    (work / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    subprocess.run([sys.executable, "-m", "w2v.cli.make_shards", str(work / "manifest.jsonl"), "--out", str(out),
                    "--max-shard-samples", "100", "--no-progress", "--overwrite"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return out


def probe(shards: Path, workers: int, cache: str, mode: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(shards), str(workers), mode], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    imports, plan, kernels, first = map(float, out[-4:])
    return {"imports": imports, "plan": plan, "kernels": kernels, "first_batch": first}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=600)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "w2v-bench-startup"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    shards = make_shards(Path(args.work), args.utterances)
    results = []
    for workers in args.workers:
        for mode in ("unprepared", "prepared"):
            with tempfile.TemporaryDirectory() as cache:
                for state in ("cold", "warm"):
                    results.append({"workers": workers, "mode": mode, "cache": state,
                                    **probe(shards, workers, cache, mode)})
    print(f"\nStart-up of a rank on {args.utterances} utterances (seconds; fresh process each):")
    print(f"{'workers':>7} {'kernels':>10} {'cache':>5} {'imports':>8} {'plan':>6} {'kernels':>8} {'first batch':>12}")
    for r in results:
        print(f"{r['workers']:>7} {r['mode']:>10} {r['cache']:>5} {r['imports']:8.1f} {r['plan']:6.1f} "
              f"{r['kernels']:8.1f} {r['first_batch']:12.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"utterances": args.utterances, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
