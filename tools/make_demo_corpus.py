#!/usr/bin/env python
"""Make the offline demo corpus: real English sentences spoken by espeak-ng, Common Voice layout.

    python tools/make_demo_corpus.py --out runs/demo/corpus [--train 3000 --dev 200 --test 200]

Sentences come from the Debian `fortunes` package (tens of thousands of English sentences),
cleaned to 3–14 words of plain letters; train/dev/test sentences are disjoint. Each utterance is
spoken by one of several English voices at a random speed, written as WAV at espeak's native
22.05 kHz into `clips/` with `train.tsv`, `dev.tsv`, `test.tsv` (`path`, `sentence` columns), so the
real Common Voice reader and the resampler are exercised. `lm.txt` holds the LM text: the training
sentences plus further sentences from the same source, never a dev or test sentence.
Deterministic for a seed; synthesis runs in parallel.
"""

import argparse
import csv
import multiprocessing as mp
import os
import random
import re
import sys
from pathlib import Path

from w2v.progress import Progress
from w2v.synth import speak

FORTUNES = Path("/usr/share/games/fortunes")
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-gb-x-rp+f2", "en-us+m5"]
# Offensive-by-design fortune files live in off/; only the plain files are read.
WORD = re.compile(r"^[A-Za-z]+(?:'[A-Za-z]+)?$")


def fortune_sentences(folder: Path = FORTUNES) -> list[str]:
    """Every distinct sentence of 3–14 plain words (letters, inner apostrophes) in the fortune files."""
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} not found: install the Debian package `fortunes` (make setup does)")
    seen, out = set(), []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.suffix):
        text = path.read_text(encoding="utf-8", errors="replace")
        for fortune in text.split("\n%\n"):
            flat = " ".join(fortune.split())
            for sentence in re.split(r"(?<=[.!?])\s+", flat):
                sentence = sentence.strip().rstrip(".!?").strip()
                words = sentence.replace(",", "").split()
                if not 3 <= len(words) <= 14 or not all(WORD.match(w) for w in words):
                    continue
                if sentence.isupper():  # shouting headlines read badly
                    continue
                key = " ".join(words).lower()
                if key not in seen:
                    seen.add(key)
                    out.append(sentence.replace(",", "") + ".")
    return out


def synth_one(job: tuple[str, str, str, int]) -> str:
    text, path, voice, speed = job
    speak(text, path, voice=voice, speed=speed)
    return path


def write_split(out: Path, name: str, rows: list[tuple[str, str]]) -> None:
    with open(out / f"{name}.tsv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["client_id", "path", "sentence", "voice"])
        for path, text in rows:
            writer.writerow([path.split("_")[1], path, text, path.split("_")[1]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--dev", type=int, default=200)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--lm-extra", type=int, default=20000, help="extra LM sentences beyond the training ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    out = Path(args.out)
    sentences = fortune_sentences()
    rng = random.Random(args.seed)
    rng.shuffle(sentences)
    need = args.train + args.dev + args.test
    if len(sentences) < need:
        raise SystemExit(f"error: only {len(sentences)} usable sentences, {need} asked for")
    splits = {"dev": sentences[:args.dev], "test": sentences[args.dev:args.dev + args.test],
              "train": sentences[args.dev + args.test:need]}
    lm_sentences = splits["train"] + sentences[need:need + args.lm_extra]
    (out / "clips").mkdir(parents=True, exist_ok=True)
    jobs, rows = [], {}
    for name, texts in splits.items():
        rows[name] = []
        for i, text in enumerate(texts):
            voice = VOICES[rng.randrange(len(VOICES))]
            clip = f"{name}_{voice.replace('+', '-')}_{i:05d}.wav"
            rows[name].append((clip, text))
            if not (out / "clips" / clip).is_file():
                jobs.append((text, str(out / "clips" / clip), voice, rng.randrange(140, 191)))
    with mp.get_context("fork").Pool(args.workers) as pool:
        for _ in Progress(pool.imap_unordered(synth_one, jobs, chunksize=8), total=len(jobs), desc="espeak-ng",
                          unit="utt"):
            pass
    for name, split_rows in rows.items():
        write_split(out, name, split_rows)
    (out / "lm.txt").write_text("".join(s + "\n" for s in lm_sentences), encoding="utf-8")
    print(f"{out}: train {len(splits['train'])}, dev {len(splits['dev'])}, test {len(splits['test'])} "
          f"utterances ({len(jobs)} synthesised now); LM text {len(lm_sentences)} sentences; "
          f"{len(sentences)} usable sentences in the source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
