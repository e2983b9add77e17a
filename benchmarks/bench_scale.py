#!/usr/bin/env python
"""What does a rank pay to start on a corpus of millions of utterances: seconds and memory?

    python benchmarks/bench_scale.py --utterances 2000000 [--world-size 8 --workers 4] [--json OUT]

Writes a synthetic shard folder as `w2v-make-shards` would leave it before columnar metadata
existed: a `w2v-shards/1` index.json of N utterances (Common-Voice-like texts: capitalised, with
punctuation, a few accented letters and curly quotes; durations 1-15 s around 5 s) over shards of
2,000, and empty tar files (start-up never reads audio). Then, for each code version, one process
per rank measured one after another, each doing what `train.py` does before its first batch:

    vocabulary        the characters of every normalised training text (rank 0 builds it in train.py,
                      the others wait for it)
    loader            SpeechLoader(spec, LoaderConfig(...), vocab=vocab, rank=, world_size=,
                      conv_kernel=, conv_stride=): the sample table, labels and CTC feasibility
    unknown           the transcripts whose labels hold [UNK] (train.py reports their characters)
    plan              this epoch's plan for every rank and worker (len(loader))

and reports the seconds, the peak RSS above the process's imports (VmHWM - VmRSS after imports),
and the private memory each of `--workers` forked children adds (Private_Dirty of its anonymous
mappings: a memory-mapped file's pages belong to the page cache, shared by every process, and
count as "dirty" in any mapping until the kernel has written them back) after touching
what a DataLoader worker touches: the key and label ids of every sample of its plan, then a full
garbage collection. The children are forked as SpeechLoader forks its workers, after gc.freeze()
(for the baseline too, whose loader did not: that favours it). Rank 0 runs first on the folder
as written (cold: caches built), then every rank again (warm). A run on a tiny folder first
compiles the numba kernels into their cache, which is not start-up.

The baseline is the same steps with the code before columnar metadata (`--baseline-commit`, taken
from this repository's git history with `git archive`): index.json parsed by every rank, a label
array per utterance. All ranks do the same work, so by default it measures rank 0 only.
"""

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "9ab7e58"  # the last commit that planned from the parsed index.json
SHARD_SAMPLES = 2000
CONV_KERNEL, CONV_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
ONSETS = "b c d f g h j k l m n p r s t v w y z br ch cl dr fl gr pl sh st th tr".split()
VOWELS = "a e i o u ea ou ai ie é".split()
CODAS = ["", "", "n", "r", "s", "t", "nd", "ng", "st", "ck"]


# ------------------------------------------------------------------------------ the synthetic corpus


def sentences(rng: random.Random, count: int) -> list[str]:
    words = ["".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(1, 3)))
             for _ in range(3000)]
    weights = [1 / (r + 1) for r in range(len(words))]  # Zipf-like: a few words most of the time
    out = []
    for _ in range(count):
        picked = rng.choices(words, weights, k=rng.randint(3, 14))
        picked[0] = picked[0].capitalize()
        if rng.random() < 0.2:
            picked[rng.randrange(len(picked))] += ","
        if rng.random() < 0.05:
            picked[-1] = f"“{picked[-1]}”"
        out.append(" ".join(picked) + rng.choice(".....?!"))
    return out


def write_folder(folder: Path, utterances: int) -> None:
    """index.json (w2v-shards/1, streamed shard by shard) and one empty .tar per shard."""
    rng = random.Random(0)
    pool = sentences(rng, max(1, utterances // 3))  # Common Voice: each sentence read by a few speakers
    folder.mkdir(parents=True)
    num_shards = (utterances + SHARD_SAMPLES - 1) // SHARD_SAMPLES
    total = 0.0
    with open(folder / "index.json.tmp", "w", encoding="utf-8") as out:
        out.write(json.dumps({"format": "w2v-shards/1", "sample_rate": 16000, "num_shards": num_shards,
                              "num_samples": utterances, "name": "scale", "codec": "flac"})[:-1] + ', "shards": [')
        for k in range(num_shards):
            n = min(SHARD_SAMPLES, utterances - k * SHARD_SAMPLES)
            durations = [round(min(15.0, max(1.0, rng.lognormvariate(1.55, 0.4))), 4) for _ in range(n)]
            name = f"scale-{k:06d}.tar"
            entry = {"name": name, "num_samples": n, "bytes": 0, "seconds": round(sum(durations), 3),
                     "keys": [f"common_voice_xx_{k * SHARD_SAMPLES + i:09d}" for i in range(n)],
                     "durations": durations, "texts": rng.choices(pool, k=n)}
            total += entry["seconds"]
            out.write(("" if k == 0 else ", ") + json.dumps(entry, ensure_ascii=False))
            (folder / name).touch()
        out.write("]}")
    os.replace(folder / "index.json.tmp", folder / "index.json")


# ------------------------------------------------------------------------------ one rank (child process)


def memory_kb(field: str, path: str = "/proc/self/status") -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def private_anonymous_kb() -> int:
    """Private_Dirty summed over the mappings that are not files: the pages this process owns."""
    total, anonymous = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header: address range, ..., path
                fields = line.split()
                anonymous = len(fields) < 6 or fields[5].startswith("[")
            elif first == "Private_Dirty:" and anonymous:
                total += int(line.split()[1])
    return total


def touch_worker_metadata(table, plan) -> None:
    """What a DataLoader worker reads per sample of its plan when it makes batches (no audio)."""
    for i in plan.stream.tolist():
        if hasattr(table, "key"):  # columnar metadata
            table.key(i), table.label_ids(i)
        else:  # the parsed index: per-shard lists and a label array per sample
            table.shards[table.shard_of[i]].keys[table.local[i]], table.labels[i]
    gc.collect()


def run_rank(args: argparse.Namespace) -> dict:
    sys.path.insert(0, args.code)
    import train  # noqa: F401  (what a rank imports: torch, transformers, accelerate, w2v)
    import w2v
    from w2v.data.loader import LoaderConfig, SpeechLoader
    from w2v.text import TextNormalizer, Vocabulary
    if not Path(w2v.__file__).resolve().is_relative_to(Path(args.code).resolve()):
        raise SystemExit(f"w2v imported from {w2v.__file__}, not from {args.code}")
    gc.collect()
    base_kb = memory_kb("VmRSS")
    seconds = {}
    spec, normalizer = args.folder, TextNormalizer()
    t = time.perf_counter()
    labels: dict = {}
    try:  # today's layout: the spec resolved once, passed to the vocabulary and the loader
        from w2v.data.labels import vocabulary_from_shards
        from w2v.shards.spec import select_shards

        spec = select_shards(spec)
        vocab = vocabulary_from_shards(spec, normalizer)
        labels["vocab"] = vocab
    except ImportError:  # an older checkout (the baseline)
        if hasattr(train, "training_vocabulary"):
            vocab = train.training_vocabulary(spec, None, normalizer)
        else:
            vocab = Vocabulary.build(train.training_texts(spec, None), normalizer)
        labels["labeler"] = vocab.encode
    seconds["vocabulary"] = time.perf_counter() - t
    t = time.perf_counter()
    cfg = LoaderConfig(max_batch_seconds=200.0, num_workers=args.workers, seed=1)
    loader = SpeechLoader(spec, cfg, rank=args.rank, world_size=args.world_size,
                          conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE, **labels)
    seconds["loader"] = time.perf_counter() - t
    t = time.perf_counter()
    unknown = train.texts_with_unknown(loader, vocab)
    seconds["unknown"] = time.perf_counter() - t
    t = time.perf_counter()
    batches = len(loader)
    seconds["plan"] = time.perf_counter() - t
    peak_mb = (memory_kb("VmHWM") - base_kb) / 1024
    workers_mb = []
    for worker in range(args.workers):  # one at a time: each child's own pages, as a worker has them
        read, write = os.pipe()
        gc.freeze()  # as SpeechLoader forks its workers (the baseline's loader did not: this favours it)
        pid = os.fork()
        if pid == 0:
            os.close(read)
            touch_worker_metadata(loader.table, loader.plans()[args.rank][worker])
            os.write(write, str(private_anonymous_kb()).encode())
            os._exit(0)
        gc.unfreeze()
        os.close(write)
        with os.fdopen(read) as pipe:
            workers_mb.append(int(pipe.read() or 0) / 1024)
        os.waitpid(pid, 0)
    return {"rank": args.rank, "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "startup_seconds": round(sum(seconds.values()), 3), "peak_rss_above_imports_mb": round(peak_mb, 1),
            "worker_private_mb": [round(m, 1) for m in workers_mb], "imports_rss_mb": round(base_kb / 1024, 1),
            "vocabulary": len(vocab), "batches": batches, "unknown_texts": len(unknown),
            "samples": len(loader.table)}


# ------------------------------------------------------------------------------ the parent


def measure(code: Path, folder: Path, rank: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--rank-of", str(folder), "--code", str(code), "--rank", str(rank),
           "--world-size", str(args.world_size), "--workers", str(args.workers)]
    env = {**os.environ, "W2V_CACHE_DIR": str(folder.parent / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code)
    if done.returncode != 0:
        raise SystemExit(f"rank {rank} with {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_version(name: str, code: Path, folder: Path, ranks: list[int], args: argparse.Namespace) -> dict:
    tiny = folder.parent / "tiny"
    write_folder(tiny, 1000)
    measure(code, tiny, ranks[0], args)  # compiles the numba kernels into their cache: not start-up
    cold = measure(code, folder, ranks[0], args)
    print(f"  {name}: cold rank {ranks[0]}: {cold['startup_seconds']:.1f} s, {cold['seconds']}", flush=True)
    warm = []
    for rank in ranks:
        warm.append(measure(code, folder, rank, args))
        print(f"  {name}: warm rank {rank}: {warm[-1]['startup_seconds']:.1f} s, "
              f"peak {warm[-1]['peak_rss_above_imports_mb']:.0f} MB, workers {warm[-1]['worker_private_mb']}", flush=True)
    return {"code": str(code), "cold": cold, "warm": warm,
            "warm_startup_seconds_max": max(w["startup_seconds"] for w in warm),
            "peak_rss_above_imports_mb_max": max(w["peak_rss_above_imports_mb"] for w in warm),
            "worker_private_mb_max": max((m for w in warm for m in w["worker_private_mb"]), default=0.0)}


def baseline_code(tmp: Path, commit: str) -> Path:
    """The code of `commit` (w2v/ and train.py) from this repository's history."""
    out = tmp / f"code-{commit}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "w2v", "train.py"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utterances", type=int, default=2_000_000)
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--ranks", type=int, default=None, help="ranks to measure warm (default: all)")
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    ap.add_argument("--baseline-ranks", type=int, default=1, help="ranks of the baseline to measure (0: none)")
    ap.add_argument("--tmp", default=None, help="folder for the synthetic corpus (default: a temporary one)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rank-of", default=None, help=argparse.SUPPRESS)  # internal: measure one rank
    ap.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_of:
        args.folder = args.rank_of
        print(json.dumps(run_rank(args)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    try:
        t = time.perf_counter()
        ranks = list(range(args.world_size))[:args.ranks]
        results = {"utterances": args.utterances, "world_size": args.world_size, "workers": args.workers,
                   "shards": (args.utterances + SHARD_SAMPLES - 1) // SHARD_SAMPLES,
                   "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
        print(f"writing {args.utterances:,} utterances ...", flush=True)
        for name in ("w2v", "baseline"):
            if name == "baseline" and args.baseline_ranks == 0:
                continue
            folder = tmp / name / "shards"
            write_folder(folder, args.utterances)  # a fresh folder per version: each builds its own caches
            results["index_mb"] = round((folder / "index.json").stat().st_size / 2**20, 1)
            code = ROOT if name == "w2v" else baseline_code(tmp, args.baseline_commit)
            version_ranks = ranks if name == "w2v" else ranks[:args.baseline_ranks]
            results[name] = run_version(name, code, folder, version_ranks, args)
            if name == "baseline":
                results[name]["commit"] = args.baseline_commit
            shutil.rmtree(tmp / name)
        results["wall_seconds"] = round(time.perf_counter() - t, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [("cold start-up, rank 0 (s)", lambda r: r["cold"]["startup_seconds"]),
            ("cold peak RSS above imports (MB)", lambda r: r["cold"]["peak_rss_above_imports_mb"]),
            ("warm start-up, slowest rank (s)", lambda r: r["warm_startup_seconds_max"]),
            ("warm peak RSS above imports (MB)", lambda r: r["peak_rss_above_imports_mb_max"]),
            ("private MB per forked worker", lambda r: r["worker_private_mb_max"])]
    print(f"\n{args.utterances:,} utterances, {results['shards']:,} shards, index.json {results['index_mb']} MB, "
          f"world {args.world_size}, {args.workers} workers per rank")
    print(f"| {'':34} | {'w2v':>10} | {'baseline':>10} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|")
    for label, get in rows:
        base = f"{get(results['baseline']):10.1f}" if "baseline" in results else f"{'-':>10}"
        print(f"| {label:34} | {get(results['w2v']):10.1f} | {base} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
