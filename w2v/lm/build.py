"""Building KenLM n-gram models from transcripts: the corpus written right, lmplz, check, binary.

The corpus is written one normalised sentence per line, each ending with a newline, so lmplz emits
`</s>` by itself (a corpus on one line is why ARPAs lack it). The text goes through the same
`TextNormalizer` as the training labels, so the LM spells words as the acoustic model emits them.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from w2v.lm.arpa_check import check_arpa
from w2v.text import TextNormalizer

ROOT = Path(__file__).resolve().parent.parent
SPECIAL = {"<s>", "</s>", "<unk>"}


def find_tool(name: str, build: bool = True) -> str:
    """lmplz / build_binary: on PATH, beside this Python, or built from the kenlm sdist once."""
    for candidate in (shutil.which(name), Path(sys.executable).parent / name, ROOT / ".venv" / "bin" / name):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    if build:
        venv = Path(sys.prefix)
        print(f"{name} not found: building KenLM into {venv / 'bin'} (once, about a minute)", file=sys.stderr)
        subprocess.run(["bash", str(ROOT / "scripts" / "build_kenlm.sh"), str(venv)], check=True)
        return find_tool(name, build=False)
    raise FileNotFoundError(f"{name} not found: run `make setup` (scripts/build_kenlm.sh builds it)")


@dataclass
class CorpusStats:
    sentences: int = 0
    skipped_empty: int = 0
    words: int = 0


def write_corpus(texts: Iterable[str], out: Path, normalizer: TextNormalizer) -> CorpusStats:
    """One normalised sentence per line, newline-terminated; empty results are counted, not written."""
    stats = CorpusStats()
    with open(out, "w", encoding="utf-8") as handle:
        for text in texts:
            line = normalizer(text)
            if not line:
                stats.skipped_empty += 1
                continue
            handle.write(line + "\n")
            stats.sentences += 1
            stats.words += line.count(" ") + 1
    return stats


def read_text_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            yield line.rstrip("\n")


def run_lmplz(corpus: Path, arpa_out: Path, order: int, prune: list[int] | None, memory: str,
              tmp: Path) -> bool:
    """Runs lmplz; retries with --discount_fallback when the corpus is too small for its estimates."""
    base = [find_tool("lmplz"), "-o", str(order), "-S", memory, "-T", str(tmp), "--text", str(corpus),
            "--arpa", str(arpa_out)]
    if prune:
        base += ["--prune", *map(str, prune)]
    proc = subprocess.run(base, capture_output=True, text=True)
    if proc.returncode == 0:
        return False
    if "discount" in proc.stderr.lower() or "BadDiscount" in proc.stderr:
        proc = subprocess.run(base + ["--discount_fallback"], capture_output=True, text=True)
        if proc.returncode == 0:
            return True
    raise RuntimeError(f"lmplz failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def unigrams(arpa_path: Path) -> list[str]:
    """The words of the 1-gram section (without <s>, </s>, <unk>), streamed."""
    words, inside = [], False
    opener = gzip.open if arpa_path.suffix == ".gz" else open
    with opener(arpa_path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("\\1-grams:"):
                inside = True
                continue
            if inside:
                if line.startswith("\\"):
                    break
                fields = line.rstrip("\n").split("\t")
                if len(fields) >= 2 and fields[1] not in SPECIAL:
                    words.append(fields[1])
    return words


@dataclass
class LMResult:
    arpa: Path
    binary: Path | None
    unigrams: Path
    corpus: CorpusStats
    discount_fallback: bool
    counts: list[int]


# What a build writes into its folder; an LM folder holds one LM, so that `--lm DIR` is unambiguous.
LM_FOLDER_FILES = ("corpus.txt", "unigrams.txt", "*gram.arpa", "*gram.bin")


def clear_lm_folder(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that already holds an LM, unless `overwrite`: then remove that LM's files."""
    existing = sorted({p for pattern in LM_FOLDER_FILES for p in out_dir.glob(pattern)})
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an LM ({', '.join(p.name for p in existing)}): "
                              "pass --overwrite to replace it, or choose another folder")
    for path in existing:
        path.unlink()


def build_lm(texts: Iterable[str], out_dir: Path, order: int = 5, normalizer: TextNormalizer | None = None,
             prune: list[int] | None = None, binary: bool = False, memory: str = "20%",
             overwrite: bool = False) -> LMResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_lm_folder(out_dir, overwrite)
    normalizer = normalizer or TextNormalizer()
    corpus_path = out_dir / "corpus.txt"
    stats = write_corpus(texts, corpus_path, normalizer)
    if stats.sentences == 0:
        raise ValueError("no sentence left after normalisation: nothing to build an LM from")
    arpa_path = out_dir / f"{order}gram.arpa"
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fallback = run_lmplz(corpus_path, arpa_path, order, prune, memory, Path(tmp))
    report = check_arpa(arpa_path)  # a corpus of newline-terminated lines gives </s>: lmplz writes it then
    if not report.ok:
        raise RuntimeError(f"{arpa_path} is not loadable by KenLM:\n{report.summary()}")
    words = unigrams(arpa_path)
    unigram_path = out_dir / "unigrams.txt"
    unigram_path.write_text("\n".join(words) + "\n", encoding="utf-8")
    binary_path = None
    if binary:
        binary_path = out_dir / f"{order}gram.bin"
        subprocess.run([find_tool("build_binary"), "-q", "8", "-b", "8", "trie", str(arpa_path), str(binary_path)],
                       check=True, capture_output=True)
    return LMResult(arpa_path, binary_path, unigram_path, stats, fallback, report.counts)
