#!/usr/bin/env python
"""CTC beam search with an n-gram: w2v's decoder against pyctcdecode + KenLM, same posteriors and weights.

    python benchmarks/bench_decode.py [--utterances 400] [--big-words 4000000] [--json OUT]

Text: the `fortunes` package's files (installed by `make setup`), lower-cased to the demo alphabet.
Every 20th line is held out; the rest trains two LMs with lmplz:
- small: a 4-gram of the text (about 0.9 M n-grams);
- big: a 5-gram of the text plus --big-words words of a random walk over its bigrams (several
  million n-grams: what a pruned 5-gram of a real corpus holds).

Posteriors: for --utterances held-out sentences, noisy CTC log-probabilities spelling them (1-2
frames per character, blanks between, a confusable letter on some frames), at a noise level that
gives a greedy WER near 30%, as a fine-tuned model on hard audio does. Both decoders get the same
posteriors, alpha 0.5, beta 1.0, beam 100, pyctcdecode's pruning defaults.

Per decoder and LM, in a fresh process each: the LM load (first: ours builds its cache from the
ARPA, KenLM reads its binary; second: from the cache / binary again), the memory the LM adds to the
process (RSS after loading and decoding, minus before), utterances per second on one core and on
all cores (ours: threads in one process; pyctcdecode: the fork pool it is meant to run with), and
WER. pyctcdecode loads the trie binary that `w2v-build-lm --binary` writes (-q 8 -b 8), its fastest
and smallest load. pyctcdecode 0.5.0 declares numpy<2: `make setup` installs it with `--no-deps`
next to numpy 2, which it decodes correctly with (this benchmark's WER column shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FORTUNES = Path("/usr/share/games/fortunes")
LETTERS = "abcdefghijklmnopqrstuvwxyz'"
LABELS = ["", "⁇", " ", *LETTERS]  # blank, [UNK], the word delimiter, letters: the demo vocabulary's order


def corpus_lines() -> list[str]:
    if not FORTUNES.is_dir():
        raise SystemExit(f"{FORTUNES} not found: apt-get install fortunes (make setup does)")
    lines = []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix in (".dat", ".u8") or not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = re.sub(r"[^a-z' ]+", " ", line.lower()).split()
            words = [w.strip("'") for w in words if w.strip("'")]
            if words:
                lines.append(" ".join(words))
    return lines


def tool(name: str) -> str:
    from w2v.lm.build import find_tool

    return find_tool(name)


def lmplz(text: Path, order: int, arpa: Path) -> None:
    if arpa.is_file():
        return
    with open(text, "rb") as source:
        subprocess.run([tool("lmplz"), "-o", str(order), "-S", "30%", "-T", str(arpa.parent), "--arpa",
                        str(arpa) + ".tmp", "--discount_fallback"], stdin=source, check=True, capture_output=True)
    os.replace(str(arpa) + ".tmp", arpa)


def binary(arpa: Path) -> Path:
    out = arpa.with_suffix(".bin")
    if not out.is_file():
        subprocess.run([tool("build_binary"), "-q", "8", "-b", "8", "trie", str(arpa), str(out)], check=True,
                       capture_output=True)
    return out


def random_walk(lines: list[str], words: int, seed: int = 0) -> list[str]:
    """Sentences of a random walk over the text's bigrams (new 3- to 5-grams, real vocabulary)."""
    rng = np.random.default_rng(seed)
    vocab: dict[str, int] = {}
    pairs = []
    for line in lines:
        ids = [vocab.setdefault(w, len(vocab)) for w in line.split()]
        pairs += zip(ids[:-1], ids[1:], strict=False)
    pairs_a = np.array(pairs, dtype=np.int64)
    pairs_a = pairs_a[np.argsort(pairs_a[:, 0], kind="stable")]
    starts = np.searchsorted(pairs_a[:, 0], np.arange(len(vocab) + 1))
    names = list(vocab)
    out, current = [], []
    w = int(pairs_a[rng.integers(len(pairs_a)), 0])
    for _ in range(words):
        current.append(names[w])
        lo, hi = starts[w], starts[w + 1]
        if hi == lo or len(current) >= 20:
            out.append(" ".join(current))
            current = []
            w = int(pairs_a[rng.integers(len(pairs_a)), 0])
        else:
            w = int(pairs_a[rng.integers(lo, hi), 1])
    return out


def posteriors(text: str, rng: np.random.Generator, confusion: float) -> np.ndarray:
    """Log-probabilities [T, V] spelling `text`: 1-2 frames per character, often a blank after it, and
    on a `confusion` share of character frames a random letter nearly as likely as the right one."""
    rows = []
    previous = None
    for ch in text:
        label = LABELS.index(ch)
        if label == previous:
            rows.append(0)
        rows += [label] * int(rng.integers(1, 3))
        if rng.random() < 0.5:
            rows.append(0)
        previous = label
    logits = rng.normal(0.0, 1.0, (len(rows), len(LABELS)))
    logits[np.arange(len(rows)), rows] += 6.0
    logits[:, 0] += 1.0
    chars = np.flatnonzero((np.array(rows) > 2) & (rng.random(len(rows)) < confusion))
    logits[chars, rng.integers(3, len(LABELS), len(chars))] += 6.0 + rng.normal(-0.3, 1.0, len(chars))
    logits -= np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return logits.astype(np.float32)


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(kind: str, lm: str, data: str, cores: int, beam: int) -> dict:
    """One decoder in this process: load twice, decode on one core and on `cores`, memory and WER."""
    import jiwer

    loaded = np.load(data, allow_pickle=False)
    refs = json.loads(str(loaded["refs"]))
    items = [loaded[f"u{i}"] for i in range(len(refs))]
    if kind == "ours":
        from w2v.lm.beam import build_word_trie
        from w2v.lm.decode import BeamDecoder

        # numba's compiled code (from its cache) is loaded first: it is code, not the LM
        BeamDecoder(LABELS, beam_width=beam).decode(items[0])
        build_word_trie(*[np.zeros(1, t) for t in (np.int32, np.int64, np.int32, np.int32, np.bool_, np.bool_)])
        before = rss_mb()
        start = time.perf_counter()
        decoder = BeamDecoder(LABELS, lm, alpha=0.5, beta=1.0, beam_width=beam)
        load = time.perf_counter() - start
        start = time.perf_counter()
        one = [decoder.decode(x) for x in items]
        one_core = time.perf_counter() - start
        added = rss_mb() - before
        decoder.processes = cores
        start = time.perf_counter()
        many = decoder.decode_batch(items)
        all_cores = time.perf_counter() - start
        decoder.close()
        # pyctcdecode's rule for texts ending in a delimiter (see w2v/lm/beam.py): the same search
        compat = BeamDecoder(LABELS, lm, alpha=0.5, beta=1.0, beam_width=beam, empty_last_word=True)
        extra = {"compat_hyps": [compat.decode(x) for x in items]}
    else:
        import logging
        import multiprocessing

        extra = {}

        from pyctcdecode import build_ctcdecoder

        logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
        words = Path(lm).with_name("unigrams.txt").read_text().split()
        before = rss_mb()
        start = time.perf_counter()
        decoder = build_ctcdecoder(LABELS, lm, unigrams=words, alpha=0.5, beta=1.0)
        load = time.perf_counter() - start
        start = time.perf_counter()
        one = [decoder.decode(x, beam_width=beam) for x in items]
        one_core = time.perf_counter() - start
        added = rss_mb() - before
        with multiprocessing.get_context("fork").Pool(cores) as pool:
            start = time.perf_counter()
            many = [b[0][0] for b in decoder.decode_beams_batch(pool, items, beam_width=beam)]
            all_cores = time.perf_counter() - start
    return {"load_s": load, "added_mb": added, "one_core_utt_s": len(items) / one_core,
            "all_cores_utt_s": len(items) / all_cores, "wer": jiwer.wer(refs, one), "same_all_cores": one == many,
            "hyps": one, **extra}


def run_child(kind: str, lm: Path, data: Path, cores: int, beam: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(lm), str(data), str(cores), str(beam)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} on {lm.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, lm, data, cores, beam = sys.argv[2:7]
        print(json.dumps(child(kind, lm, data, int(cores), int(beam))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=400)
    p.add_argument("--big-words", type=int, default=4_000_000, help="random-walk words added to the big LM's text")
    p.add_argument("--confusion", type=float, default=0.12, help="share of character frames with a rival letter")
    p.add_argument("--beam", type=int, default=100)
    p.add_argument("--lms", nargs="+", default=["small", "big"], choices=["small", "big"])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "w2v-bench-decode"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import jiwer

    from w2v.lm.build import unigrams
    from w2v.lm.decode import greedy_decode
    from w2v.lm.ngram import NgramModel, cache_folder

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = corpus_lines()
    held = [line for i, line in enumerate(lines) if i % 20 == 0 and 4 <= len(line.split()) <= 20]
    train = [line for i, line in enumerate(lines) if i % 20 != 0]
    rng = np.random.default_rng(0)
    refs = [held[i] for i in sorted(rng.choice(len(held), min(args.utterances, len(held)), replace=False))]
    items = [posteriors(r, rng, args.confusion) for r in refs]
    data = work / "posteriors.npz"
    np.savez(data, refs=json.dumps(refs), **{f"u{i}": x for i, x in enumerate(items)})
    inverse = {i: ("|" if label == " " else label) for i, label in enumerate(LABELS)}
    greedy = jiwer.wer(refs, [greedy_decode(x, inverse, 0)[0] for x in items])
    frames = sum(len(x) for x in items)
    print(f"{len(refs)} held-out sentences, {frames / len(refs):.0f} frames each on average; greedy WER {100 * greedy:.1f}%")

    text = work / "train.txt"
    if not text.is_file():
        text.write_text("\n".join(train) + "\n")
    lms = {}
    if "small" in args.lms:
        (work / "small").mkdir(exist_ok=True)
        lmplz(text, 4, work / "small" / "4gram.arpa")
        lms["small"] = work / "small" / "4gram.arpa"
    if "big" in args.lms:
        (work / "big").mkdir(exist_ok=True)
        big_text = work / "big" / "text.txt"
        if not big_text.is_file():
            big_text.write_text("\n".join(train + random_walk(train, args.big_words)) + "\n")
        lmplz(big_text, 5, work / "big" / "5gram.arpa")
        lms["big"] = work / "big" / "5gram.arpa"
    cores = os.cpu_count() or 1
    results = {"utterances": len(refs), "greedy_wer": greedy, "beam": args.beam, "cores": cores, "lms": {}}
    for name, arpa in lms.items():
        (arpa.parent / "unigrams.txt").write_text("\n".join(unigrams(arpa)) + "\n")
        kenlm_binary = binary(arpa)
        shutil.rmtree(cache_folder(arpa), ignore_errors=True)
        start = time.perf_counter()
        model = NgramModel.load(arpa)
        build = time.perf_counter() - start
        counts = model.counts
        del model
        ours = run_child("ours", arpa, data, cores, args.beam)
        theirs = run_child("pyctcdecode", kenlm_binary, data, cores, args.beam)
        compat = ours.pop("compat_hyps")
        same = sum(a == b for a, b in zip(ours.pop("hyps"), theirs["hyps"], strict=True))
        ours["pyctcdecode_end_rule"] = {"wer": jiwer.wer(refs, compat),
                                        "same_text": sum(a == b for a, b in zip(compat, theirs.pop("hyps"), strict=True)) / len(refs)}
        results["lms"][name] = {"arpa": str(arpa), "order": len(counts), "ngrams": sum(counts),
                                "arpa_mb": arpa.stat().st_size / 1e6, "binary_mb": kenlm_binary.stat().st_size / 1e6,
                                "ours_cache_build_s": build, "ours": ours, "pyctcdecode": theirs,
                                "same_text": same / len(refs)}
        r = results["lms"][name]
        print(f"\n{name}: {r['order']}-gram, {r['ngrams']:,} n-grams (ARPA {r['arpa_mb']:.0f} MB, KenLM trie "
              f"binary {r['binary_mb']:.0f} MB); ours builds its cache from the ARPA once in {build:.1f} s")
        print(f"{'decoder':22} {'load s':>7} {'LM MB':>7} {'utt/s 1 core':>13} {f'utt/s {cores} cores':>14} {'WER %':>6}")
        for label, row in (("w2v (numba)", ours), ("pyctcdecode + KenLM", theirs)):
            print(f"{label:22} {row['load_s']:7.2f} {row['added_mb']:7.0f} {row['one_core_utt_s']:13.1f} "
                  f"{row['all_cores_utt_s']:14.1f} {100 * row['wer']:6.2f}")
        rule = ours["pyctcdecode_end_rule"]
        print(f"speed-up on one core: {ours['one_core_utt_s'] / theirs['one_core_utt_s']:.1f}x; the same text for "
              f"{100 * r['same_text']:.0f}% of utterances; with pyctcdecode's end rule for texts ending in a delimiter: "
              f"WER {100 * rule['wer']:.2f}%, the same text for {100 * rule['same_text']:.0f}%")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
