#!/usr/bin/env python3
"""Benchmark the ARPA </s> fixer against the blog's loop and cp, plus --check.

    python benchmarks/bench_arpa.py [--size-gb 1] [--json OUT]

Writes a synthetic 5-gram ARPA without </s> into a temporary folder, laid out as lmplz writes one
(<unk>, <s> first among the 1-grams; Zipfian words; entries sorted by suffix), then times, each
in its own subprocess: `cp`, `w2v-fix-arpa IN OUT`, the blog's loop (the `</s>` loop from
Hugging Face's blog post "Boosting Wav2Vec2 with n-grams in Transformers", `ARPA_EOS_LOOP` in
benchmarks/baselines.py, verbatim in `python -c`), and `w2v-fix-arpa --check` (on a fixed
copy). Each path runs `--repeat` times, interleaved round by round; the table gives medians. Peak RSS
comes from GNU time (/usr/bin/time -f %M). All reads come from the page cache (the file was just
written), and dirty pages are synced before each timed run so that one run's writeback does not
slow the next.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baselines import ARPA_EOS_LOOP  # the blog's loop, verbatim (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
FIX_COMMAND = ["-m", "w2v.cli.fix_arpa"]  # w2v-fix-arpa
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")  # GNU time, for each child's own peak RSS

ORDER = 5
SHARES = {2: 0.15, 3: 0.25, 4: 0.30, 5: 0.30}  # of the bytes after the 1-grams, roughly as lmplz's 5-grams
POOL_LINES = 100_000  # distinct lines generated per order, repeated to reach the size


def _words(n: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choices(letters, k=rng.randint(2, 10))))
    return sorted(words)


def _pool(order: int, vocab: list[str], cum_weights: list[float], rng: random.Random) -> bytes:
    """POOL_LINES entries of one order, like lmplz's: Zipfian words, sorted by suffix (last word
    first), a backoff on all but the highest order."""
    entries = sorted((rng.choices(vocab, cum_weights=cum_weights, k=order) for _ in range(POOL_LINES)),
                     key=lambda words: words[::-1])
    lines = []
    for words in entries:
        prob = f"-{rng.uniform(0.01, 3):.7f}\t{' '.join(words)}"
        lines.append(f"{prob}\t-{rng.uniform(0, 1):.7f}\n" if order < ORDER else f"{prob}\n")
    return "".join(lines).encode()


def write_synthetic_arpa(path: Path, size: int, vocab_size: int, seed: int = 0) -> list[int]:
    """A 5-gram ARPA of about ``size`` bytes without </s>; returns the entry counts per order."""
    rng = random.Random(seed)
    vocab = _words(vocab_size, rng)
    ranks = list(range(1, vocab_size + 1))
    rng.shuffle(ranks)
    cum_weights = list(itertools.accumulate(1 / r for r in ranks))  # Zipf: p(word) ~ 1 / rank
    unigrams = ["-6.0000000\t<unk>\t0\n", "0\t<s>\t-0.3010300\n"]
    unigrams += [f"-{rng.uniform(2, 7):.7f}\t{w}\t-{rng.uniform(0, 1):.7f}\n" for w in vocab]
    sections = {1: ("".join(unigrams).encode(), 1, b"")}
    rest = max(size - len(sections[1][0]), 0)
    for order, share in SHARES.items():
        pool = _pool(order, vocab, cum_weights, rng)
        budget = int(rest * share)
        reps, tail_len = divmod(budget, len(pool))
        tail = pool[:pool.rfind(b"\n", 0, tail_len) + 1]
        sections[order] = (pool, reps, tail)
    counts = [pool.count(b"\n") * reps + tail.count(b"\n") for pool, reps, tail in sections.values()]
    with open(path, "wb") as f:
        f.write(b"\\data\\\n" + b"".join(b"ngram %d=%d\n" % (n + 1, c) for n, c in enumerate(counts)) + b"\n")
        for order, (pool, reps, tail) in sections.items():
            f.write(b"\\%d-grams:\n" % order)
            for _ in range(reps):
                f.write(pool)
            f.write(tail + b"\n")
        f.write(b"\\end\\\n")
    return counts


def run_child(cmd: list[str], cwd: Path | None = None) -> dict:
    """Run one command: wall seconds, CPU seconds (user + system) and peak RSS in MB of that command.

    GNU time measures the child itself: one forked from this (big) Python process would count our
    own memory in its ru_maxrss, since the peak of the address space it starts from survives exec.
    CPU seconds do not grow when other processes share the cores; wall seconds do.
    """
    os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as usage:
        timed = [GNU_TIME, "-f", "%U %S %M", "-o", usage.name, *cmd] if GNU_TIME else cmd
        t0 = time.perf_counter()
        proc = subprocess.run(timed, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()}")
        if GNU_TIME:
            user, system, rss_kib = usage.read().split()[-3:]
            cpu, rss = float(user) + float(system), int(rss_kib) / 1024
        else:  # upper bounds: these include what the child inherited from us and earlier children
            own = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu, rss = own.ru_utime + own.ru_stime, own.ru_maxrss / 1024
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_mb": rss}


def interleaved(paths: dict[str, tuple[list[str], Path | None, Path | None]], repeat: int) -> dict:
    """Every path run ``repeat`` times, round after round (cp, fixer, loop, check, cp, ...), so
    that a slow spell of the machine falls on all of them alike. Per path: the median run's
    seconds and CPU seconds, the fastest run's seconds, and the largest RSS seen.
    ``paths``: name → (command, a file to delete before each run, working folder)."""
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(repeat):
        for name, (cmd, cleanup, cwd) in paths.items():
            if cleanup is not None:
                cleanup.unlink(missing_ok=True)
            runs[name].append(run_child(cmd, cwd))
    out = {}
    for name, measured in runs.items():
        by_time = sorted(measured, key=lambda r: r["seconds"])
        median = by_time[len(by_time) // 2]
        out[name] = {**median, "best_seconds": by_time[0]["seconds"], "rss_mb": max(r["rss_mb"] for r in measured),
                     "runs": len(measured)}
    return out


def bench(size_gb: float, vocab_size: int | None, repeat: int, tmp_root: str | None) -> dict:
    load_before = os.getloadavg()[0]
    size = int(size_gb * 1e9)
    vocab_size = vocab_size or max(5_000, min(1_000_000, int(200_000 * size_gb)))
    tmp = Path(tempfile.mkdtemp(prefix="bench_arpa.", dir=tmp_root))
    try:
        src = tmp / "5gram.arpa"
        t0 = time.perf_counter()
        counts = write_synthetic_arpa(src, size, vocab_size)
        gen_s = time.perf_counter() - t0
        nbytes = src.stat().st_size
        print(f"synthetic 5-gram ARPA: {nbytes / 1e6:.0f} MB, counts {counts}, vocabulary {vocab_size}, "
              f"written in {gen_s:.1f} s ({tmp})", flush=True)
        py = sys.executable
        ours_out, loop_out, cp_out = tmp / "ours.arpa", tmp / "5gram_correct.arpa", tmp / "cp.arpa"
        checked = tmp / "checked.arpa"  # --check reads a fixed file (a passing check) of its own
        subprocess.run([py, *FIX_COMMAND, str(src), str(checked)], check=True, stdout=subprocess.DEVNULL)
        rows = interleaved({
            "cp": (["cp", str(src), str(cp_out)], cp_out, None),
            "w2v-fix-arpa": ([py, *FIX_COMMAND, str(src), str(ours_out)], ours_out, None),
            "blog loop": ([py, "-c", ARPA_EOS_LOOP], loop_out, tmp),
            "w2v-fix-arpa --check": ([py, *FIX_COMMAND, "--check", str(checked)], None, None),
        }, repeat)
        identical = _same_bytes(ours_out, loop_out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _report(rows, nbytes, counts, vocab_size, identical, [load_before, os.getloadavg()[0]], repeat)


def _same_bytes(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def _report(rows: dict, nbytes: int, counts: list[int], vocab_size: int, identical: bool, load: list,
            repeat: int) -> dict:
    loop_s, cp_s = rows["blog loop"]["seconds"], rows["cp"]["seconds"]
    results = {}
    for name, run in rows.items():
        results[name] = {
            "seconds": round(run["seconds"], 3),
            "best_seconds": round(run["best_seconds"], 3),
            "cpu_seconds": round(run["cpu_seconds"], 3),
            "mb_per_s": round(nbytes / run["seconds"] / 1e6, 1),
            "peak_rss_mb": round(run["rss_mb"], 1),
            "x_blog_loop": round(loop_s / run["seconds"], 2),
            "pct_of_cp": round(100 * cp_s / run["seconds"], 1),
        }
    return {
        "size_bytes": nbytes,
        "counts": counts,
        "vocabulary": vocab_size,
        "output_identical_to_blog_loop": identical,
        "interleaved_repeats": repeat,
        "results": results,
        "machine": {"cpus": os.cpu_count(), "load_average_before_after": load, "python": platform.python_version(),
                    "platform": platform.platform()},
    }


def print_table(report: dict) -> None:
    load = report["machine"]["load_average_before_after"]
    print(f"\n{report['size_bytes'] / 1e6:.0f} MB 5-gram ARPA, {report['vocabulary']} words; fixer output identical "
          f"to the blog's loop: {report['output_identical_to_blog_loop']}; median of {report['interleaved_repeats']} "
          f"interleaved runs each; load average {load[0]:.1f} -> {load[1]:.1f} on {report['machine']['cpus']} CPUs")
    head = (f"{'name':<22}{'seconds':>9}{'CPU s':>8}{'MB/s':>8}{'peak RSS MB':>13}{'x blog loop':>14}"
            f"{'% of cp':>9}")
    print(head)
    print("-" * len(head))
    for name, r in report["results"].items():
        print(f"{name:<22}{r['seconds']:>9.2f}{r['cpu_seconds']:>8.2f}{r['mb_per_s']:>8.0f}{r['peak_rss_mb']:>13.1f}"
              f"{r['x_blog_loop']:>14.1f}{r['pct_of_cp']:>9.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the synthetic ARPA (default 1)")
    parser.add_argument("--vocab", type=int, default=None, help="1-gram count (default 200k per GB)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved runs of each path (cp, the fixer, the blog loop, --check); median kept")
    parser.add_argument("--tmp-dir", default=None, help="where to write the files (default: $TMPDIR)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    report = bench(args.size_gb, args.vocab, args.repeat, args.tmp_dir)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
