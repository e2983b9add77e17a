"""An n-gram language model read from an ARPA file, queried from numba: KenLM's trie, our own format.

The beam search asks one question many times: log10 p(word | history) and the state after it.
KenLM answers it in C++ behind a Python call per word; here the model is a set of flat arrays
that the numba beam search (w2v/lm/beam.py) reads directly, built once from the ARPA and cached
beside it, memory-mapped on every later load.

Layout (KenLM's reversed trie, without bit packing). Every n-gram is a node; a node's parent is
the n-gram without its *first* (oldest) word, so walking from the unigram of the new word to
older context words finds the longest n-gram that exists in one pass, and the nodes visited are
exactly the suffixes the next state needs. Nodes of order k are stored after those of order k-1,
sorted by (parent, word); `child[i]:child[i+1]` are the children of node i, so one array serves
every order. Unigram node i is word i.

    word[n]      uint16   the word this node adds (the oldest of its n-gram); int32 when the
                          vocabulary has more than 65,535 words
    prob[n]      float32  log10 p(last word | the others): the ARPA's first column
    backoff[m]   float32  log10 backoff of the n-gram as a context (nodes below the top order)
    child[m+1]   int32/64 first child of each node below the top order, and the end

The probability of a word after a history is the standard back-off recursion, as KenLM computes
it: the longest n-gram (history suffix + word) found, plus the backoffs of the longer contexts
that were not. A state is the history (newest word first, at most order-1 words, only as long as
an n-gram of it exists) with the backoff of each of its suffixes.

The cache: a hidden folder `.NAME.arpa.w2v-lm/` beside the ARPA (or under `$W2V_CACHE_DIR` when
that folder is read-only) with `meta.json` (format version, the ARPA's size and mtime, order,
counts) and one `.npy` per array. A changed ARPA is rebuilt; the build is atomic and locked, so
concurrent processes wait for one build.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from w2v.atomic import atomic_dir, cache_root, locked

FORMAT = "w2v-ngram/2"
SPECIAL = ("<s>", "</s>", "<unk>")
UNK_MISSING_LOG10 = -100.0  # KenLM's probability for unknown words when an ARPA has no <unk>


class ArpaError(ValueError):
    """An ARPA file this model cannot be built from (the message names the line)."""


# --- reading the ARPA --------------------------------------------------------------------------


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


@dataclass
class _Section:
    words: np.ndarray  # [count, order] int32, oldest word first
    prob: np.ndarray  # [count] float32
    backoff: np.ndarray  # [count] float32 (zeros for the top order)


def read_arpa(path: Path) -> Iterator[tuple[list[int], list[str], _Section]]:
    """Per order, streamed line by line: the header's counts, the vocabulary (complete from the
    first section on: the 1-grams, in id order) and that order's arrays. One order at a time is in
    memory: the caller builds from it before the next is read."""
    with _open_text(path) as handle:
        counts = _read_header(handle, path)
        vocab: dict[str, int] = {}
        names: list[str] = []
        number = 0
        for order, count in enumerate(counts, start=1):
            top = order == len(counts)
            words = np.empty((count, order), dtype=np.int32)
            prob = np.empty(count, dtype=np.float32)
            backoff = np.zeros(count, dtype=np.float32)
            filled = 0
            for line in handle:
                number += 1
                line = line.strip()
                if not line:
                    if filled == count:
                        break
                    continue
                if line.startswith("\\"):
                    raise ArpaError(f"{path}: the {order}-gram section ends after {filled} of {count} entries "
                                    f"announced in the header (at {line!r})")
                fields = line.split("\t") if "\t" in line else line.split()
                if "\t" not in line:  # space-separated: the last field may be a backoff
                    fields = _split_spaced(fields, order)
                if len(fields) < 2 or len(fields) > 3 or filled >= count:
                    raise ArpaError(f"{path}: malformed {order}-gram line {line[:80]!r}")
                try:
                    prob[filled] = float(fields[0])
                    if len(fields) == 3 and not top:
                        backoff[filled] = float(fields[2])
                except ValueError as exc:
                    raise ArpaError(f"{path}: malformed {order}-gram line {line[:80]!r}") from exc
                grams = fields[1].split(" ")
                if len(grams) != order:
                    raise ArpaError(f"{path}: {order}-gram line with {len(grams)} words: {line[:80]!r}")
                if order == 1:
                    if grams[0] in vocab:
                        raise ArpaError(f"{path}: the word {grams[0]!r} is listed twice among the 1-grams")
                    vocab[grams[0]] = len(names)
                    names.append(grams[0])
                    words[filled, 0] = vocab[grams[0]]
                else:
                    try:
                        words[filled] = [vocab[g] for g in grams]
                    except KeyError as exc:
                        raise ArpaError(f"{path}: the {order}-gram {fields[1]!r} has a word that is not a "
                                        f"1-gram: {exc.args[0]!r}") from None
                filled += 1
            if filled != count:
                raise ArpaError(f"{path}: the {order}-gram section has {filled} entries, the header says {count}")
            _expect_section_end(handle, path, order, len(counts))
            yield counts, names, _Section(words, prob, backoff)
            del words, prob, backoff  # built from by now: not held while the next order is read


def _split_spaced(fields: list[str], order: int) -> list[str]:
    if len(fields) == order + 1:
        return [fields[0], " ".join(fields[1:])]
    if len(fields) == order + 2:
        return [fields[0], " ".join(fields[1:-1]), fields[-1]]
    return fields


def _read_header(handle, path: Path) -> list[int]:
    for line in handle:
        if line.strip() == "\\data\\":
            break
    else:
        raise ArpaError(f"{path}: no \\data\\ header: not an ARPA file")
    counts = []
    for line in handle:
        line = line.strip()
        if line.startswith("ngram "):
            order, _, count = line[len("ngram "):].partition("=")
            if int(order) != len(counts) + 1:
                raise ArpaError(f"{path}: header line {line!r} out of order")
            counts.append(int(count))
        elif line == "\\1-grams:":
            break
        elif line:
            raise ArpaError(f"{path}: unexpected header line {line!r}")
    if not counts:
        raise ArpaError(f"{path}: the header lists no n-gram counts")
    return counts


def _expect_section_end(handle, path: Path, order: int, highest: int) -> None:
    wanted = "\\end\\" if order == highest else f"\\{order + 1}-grams:"
    for line in handle:
        line = line.strip()
        if not line:
            continue
        if line != wanted:
            raise ArpaError(f"{path}: expected {wanted!r} after the {order}-grams, found {line[:80]!r}")
        return
    raise ArpaError(f"{path}: the file ends before {wanted!r}")


# --- building the trie -------------------------------------------------------------------------


def build_arrays(sections: Iterator[tuple[list[int], list[str], _Section]]
                 ) -> tuple[list[int], list[str], dict[str, np.ndarray]]:
    """The counts per order, the vocabulary and the reversed trie's arrays, built order by order as
    `read_arpa` reads them (see the module docstring)."""
    counts, names, uni = next(sections)
    vocab_size, orders = len(names), len(counts)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total, below_top = int(starts[-1]), int(starts[-2])
    word = np.empty(total, dtype=np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32)
    prob = np.empty(total, dtype=np.float32)
    backoff = np.empty(below_top, dtype=np.float32)
    child = np.empty(below_top + 1, dtype=np.int32 if total < 2**31 - 1 else np.int64)
    word[:vocab_size] = np.arange(vocab_size)
    prob[:vocab_size] = uni.prob
    if orders > 1:
        backoff[:vocab_size] = uni.backoff
    keys = [np.arange(vocab_size, dtype=np.int64)]  # per order: parent-local index * V + word, sorted
    for k, (_, _, sec) in enumerate(sections, start=1):
        grams = sec.words  # [count, k+1], oldest first
        parent = grams[:, k].astype(np.int64)  # the newest word's unigram, then older words
        for depth in range(1, k):
            wanted = parent * vocab_size + grams[:, k - depth]
            found = np.searchsorted(keys[depth], wanted)
            found = np.minimum(found, len(keys[depth]) - 1)
            missing = keys[depth][found] != wanted
            if missing.any():
                row = int(np.flatnonzero(missing)[0])
                gram = " ".join(names[w] for w in grams[row])
                suffix = " ".join(names[w] for w in grams[row, k - depth:])
                raise ArpaError(f"the {k + 1}-gram {gram!r} has no {depth + 1}-gram {suffix!r}: the ARPA is not "
                                "closed under suffixes (lmplz writes closed files; rebuild it with w2v-build-lm)")
            parent = found
        own = parent * vocab_size + grams[:, 0]
        order = np.argsort(own, kind="stable")
        own = own[order]
        if len(own) > 1 and (own[1:] == own[:-1]).any():
            row = int(order[np.flatnonzero(own[1:] == own[:-1])[0]])
            raise ArpaError(f"the {k + 1}-gram {' '.join(names[w] for w in grams[row])!r} is listed twice")
        lo, hi = int(starts[k]), int(starts[k + 1])
        word[lo:hi] = grams[order, 0]
        prob[lo:hi] = sec.prob[order]
        if k + 1 < orders:
            backoff[lo:hi] = sec.backoff[order]
        parents_sorted = own // vocab_size
        previous = int(starts[k - 1])
        child[previous:lo] = np.searchsorted(parents_sorted, np.arange(lo - previous)) + lo
        keys.append(own if k + 1 < orders else own[:0])  # the top order is nobody's parent
        del grams, sec, order, own, parents_sorted
    if orders > 1:
        child[below_top] = total
    else:
        child[:] = total
    return counts, names, {"word": word, "prob": prob, "backoff": backoff, "child": child}


# --- the cache ---------------------------------------------------------------------------------


def cache_folder(arpa: Path) -> Path:
    """`.NAME.w2v-lm/` beside the ARPA; under $W2V_CACHE_DIR when that folder is not writable."""
    arpa = arpa.resolve()
    if os.access(arpa.parent, os.W_OK):
        return arpa.parent / f".{arpa.name}.w2v-lm"
    digest = hashlib.sha1(str(arpa).encode()).hexdigest()[:16]
    return cache_root() / "lm" / digest / arpa.name


def _identity(arpa: Path) -> dict:
    stat = arpa.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _fresh(folder: Path, identity: dict) -> dict | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == FORMAT and meta.get("arpa") == identity else None


def write_cache(arpa: Path, folder: Path) -> dict:
    try:
        counts, names, arrays = build_arrays(read_arpa(arpa))
    except ArpaError as exc:
        message = str(exc)
        raise ArpaError(message if message.startswith(str(arpa)) else f"{arpa}: {message}") from None
    chars, offsets = _codepoints(names)
    meta = {"format": FORMAT, "arpa": _identity(arpa), "order": len(counts), "counts": counts}
    with atomic_dir(folder) as tmp:
        for name, array in {**arrays, "chars": chars, "char_offsets": offsets}.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def _codepoints(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The words as one array of Unicode code points and their offsets (no Python object per word on load)."""
    text = "".join(names)
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int32)
    offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(n) for n in names], out=offsets[1:])
    return chars, offsets


# --- the model ---------------------------------------------------------------------------------


class NgramModel:
    """An ARPA n-gram model as memory-mapped arrays, built on first use and cached beside the file.

        lm = NgramModel.load("lm/5gram.arpa")
        lm.score_sentence("the cat sat")   # log10, with <s> and </s>: what kenlm.Model.score gives
    """

    def __init__(self, folder: Path, meta: dict, arpa: Path):
        self.folder, self.arpa, self.meta = folder, arpa, meta
        self.order: int = meta["order"]
        self.counts: list[int] = meta["counts"]
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
                  for name in ("word", "prob", "backoff", "child", "chars", "char_offsets")}
        self.word, self.prob = np.asarray(arrays["word"]), np.asarray(arrays["prob"])
        self.backoff, self.child = np.asarray(arrays["backoff"]), np.asarray(arrays["child"])
        self.chars, self.char_offsets = np.asarray(arrays["chars"]), np.asarray(arrays["char_offsets"])
        self._words: list[str] | None = None
        self._ids: dict[str, int] | None = None
        ids = {w: self.word_id(w) for w in SPECIAL}
        self.unk, self.bos, self.eos = ids["<unk>"], ids["<s>"], ids["</s>"]

    @classmethod
    def load(cls, arpa: str | os.PathLike) -> NgramModel:
        arpa = Path(arpa)
        if not arpa.is_file():
            raise FileNotFoundError(f"{arpa}: no such ARPA file")
        folder, identity = cache_folder(arpa), _identity(arpa)
        meta = _fresh(folder, identity)
        if meta is None:
            with locked(folder):
                meta = _fresh(folder, identity) or write_cache(arpa, folder)
        return cls(folder, meta, arpa)

    @property
    def vocab_size(self) -> int:
        return len(self.char_offsets) - 1

    def nbytes(self) -> int:
        """What the model's arrays occupy (memory-mapped: resident once touched)."""
        return sum(a.nbytes for a in (self.word, self.prob, self.backoff, self.child, self.chars, self.char_offsets))

    def words(self) -> list[str]:
        """The vocabulary in id order (decoded on first use)."""
        if self._words is None:
            text = self.chars.astype(np.uint32).tobytes().decode("utf-32-le")
            bounds = self.char_offsets.tolist()
            self._words = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return self._words

    def word_id(self, word: str) -> int:
        """The word's id, or -1 when it is not in the vocabulary."""
        if self._ids is None:
            self._ids = {w: i for i, w in enumerate(self.words())}
        return self._ids.get(word, -1)

    def start_state(self, sentence_start: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
        """The state before the first word: after <s> (KenLM's BeginSentenceWrite), or no context."""
        words = np.zeros(max(1, self.order - 1), dtype=np.int32)
        backoffs = np.zeros(max(1, self.order - 1), dtype=np.float32)
        if not sentence_start or self.bos < 0 or self.order == 1:
            return words, backoffs, 0
        words[0] = self.bos
        backoffs[0] = self.backoff[self.bos]
        return words, backoffs, 1

    def score(self, state: tuple[np.ndarray, np.ndarray, int], word: str) -> tuple[float, tuple]:
        """log10 p(word | state) and the state after it; an unknown word scores as <unk>."""
        wid = self.word_id(word)
        if wid < 0:
            wid = self.unk
        words, backoffs, length = state
        new_words, new_backoffs = np.zeros_like(words), np.zeros_like(backoffs)
        if wid < 0:
            return UNK_MISSING_LOG10, (new_words, new_backoffs, 0)
        logp, new_length = score_word(wid, words, backoffs, length, self.prob, self.backoff, self.word,
                                      self.child, self.order, new_words, new_backoffs)
        return float(logp), (new_words, new_backoffs, int(new_length))

    def score_sentence(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """log10 probability of a sentence: kenlm.Model.score's definition."""
        state = self.start_state(bos)
        total = 0.0
        for word in sentence.split() + (["</s>"] if eos else []):
            logp, state = self.score(state, word)
            total += logp
        return total


@numba.njit(cache=True, nogil=True)
def find_child(node, w, word, child):
    """The child of `node` that adds word `w` (binary search), or -1."""
    if node >= len(child) - 1:
        return -1
    lo = child[node]
    hi = child[node + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if word[mid] < w:
            lo = mid + 1
        else:
            hi = mid
    if lo < child[node + 1] and word[lo] == w:
        return lo
    return -1


@numba.njit(cache=True, nogil=True)
def score_word(w, words, backoffs, length, prob, backoff, word, child, order, new_words, new_backoffs):
    """log10 p(w | history) and the new state written into new_words/new_backoffs; returns its length.

    history: words[0] is the newest word, backoffs[j] the backoff of the n-gram words[j]..words[0].
    """
    node = w
    logp = prob[node]
    new_words[0] = w
    new_backoffs[0] = backoff[node] if node < len(backoff) else 0.0
    new_length = 1 if order > 1 else 0
    matched = 0
    for j in range(length):
        nxt = find_child(node, words[j], word, child)
        if nxt < 0:
            break
        node = nxt
        logp = prob[node]
        matched = j + 1
        if j + 1 < order - 1:
            new_words[j + 1] = words[j]
            new_backoffs[j + 1] = backoff[node]
            new_length = j + 2
    for j in range(matched, length):
        logp += backoffs[j]
    return logp, new_length


LOG10_TO_LN = math.log(10.0)
