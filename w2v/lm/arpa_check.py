"""Checking an ARPA file for everything KenLM requires: :func:`check_arpa` and :class:`CheckReport`.

One streaming pass (``.gz`` allowed) over every line: entry counts per section, TAB-separated
fields, log probs <= 0, no backoff on the highest order, every word of a higher-order entry present
as a 1-gram, ``\\end\\``. The first problem raises :class:`w2v.lm.arpa.ArpaError` with its line
number; a well-formed file gives a :class:`CheckReport`, which also says whether ``<s>`` and
``</s>`` are there (``kenlm.Model`` refuses the file without them) and recognises an LM built from
a corpus written on one line.

The scanner's inner loop (:func:`_scan_kernel`) is compiled with numba, because a Python loop over
every line is far slower than reading the file; it releases the GIL, so above the 1-grams several
threads scan slices of each buffer. numba and numpy are project dependencies but are imported only
when a check runs (fixing stays standard library only). The compiled loop only accepts lines it
can prove fine and stops at anything else; the pure-Python path then decides about that line, with
:func:`w2v.lm.arpa.entry_problem` wording every error message, and it also runs the whole check
without numba (``jit=False``). The 1-gram vocabulary is a Python set in the pure-Python path and a
table of 64-bit FNV-1a hashes in the compiled one, so there a missing 1-gram whose hash collides
with a present one (odds ~ vocabulary / 2**64) would pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from w2v.lm.arpa import (
    BOS,
    EOS,
    ArpaError,
    Reader,
    block_lines,
    check_lines,
    count_mismatch,
    entry_problem,
    expect_end,
    expect_section,
    open_input,
    read_header,
    section_stop,
    split_words,
    truncated_in,
)

# 64-bit FNV-1a, kept as signed int64 (wrapping arithmetic) so the compiled code needs no numpy types.
_FNV_OFFSET = 14695981039346656037 - (1 << 64)
_FNV_PRIME = 1099511628211
# Return codes of _scan_kernel.
_DONE, _SECTION_END, _SUSPECT, _TABLE_FULL = 0, 1, 2, 3
_PARALLEL_MIN = 1 << 20  # buffers smaller than this are scanned in one thread


@dataclass
class CheckReport:
    """What :func:`check_arpa` found in a well-formed file; ``ok`` says whether KenLM loads it."""

    path: str
    counts: list[int]  # entries per order, as in the header and as found
    has_bos: bool
    has_eos: bool
    bos_bigrams: int  # bigrams starting with <s>
    bytes_read: int  # uncompressed bytes
    seconds: float
    jit: bool  # whether the compiled scanner ran
    notes: list[str] = field(default_factory=list)

    @property
    def one_line_corpus(self) -> bool:
        """The signature of an LM built from a corpus on a single line (no newline, hence no </s>)."""
        return not self.has_eos and self.bos_bigrams == 1

    @property
    def ok(self) -> bool:
        """True when kenlm.Model loads the file with its default configuration."""
        return self.has_bos and self.has_eos

    def summary(self) -> str:
        orders = ", ".join(f"{n + 1}-grams {c}" for n, c in enumerate(self.counts))
        mb_s = self.bytes_read / max(self.seconds, 1e-9) / 1e6
        lines = [f"{self.path}: order {len(self.counts)} ({orders}), {self.bytes_read} bytes "
                 f"checked in {self.seconds:.2f} s ({mb_s:.0f} MB/s)"]
        lines += self.notes
        lines.append("OK: KenLM can load it" if self.ok else "NOT OK: kenlm.Model refuses it as it is")
        return "\n".join(lines)


def _fnv(word: bytes) -> int:
    """The hash _scan_kernel computes, as a signed 64-bit int; never 0 (0 marks an empty slot)."""
    h = _FNV_OFFSET & 0xFFFFFFFFFFFFFFFF
    for c in word:
        h = ((h ^ c) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    if h >= 1 << 63:
        h -= 1 << 64
    return h or 1


def _number_end(buf, p):
    """Where ``DIGITS[.DIGITS][(e|E)[+-]DIGITS]`` starting at buf[p] ends (at least one digit in
    the mantissa), or -1. Called by _scan_kernel, compiled with it (register_jitable)."""
    digits = 0
    while 48 <= buf[p] <= 57:
        p += 1
        digits += 1
    if buf[p] == 46:
        p += 1
        while 48 <= buf[p] <= 57:
            p += 1
            digits += 1
    if digits == 0:
        return -1
    if buf[p] == 101 or buf[p] == 69:
        p += 1
        if buf[p] == 43 or buf[p] == 45:
            p += 1
        if not 48 <= buf[p] <= 57:
            return -1
        while 48 <= buf[p] <= 57:
            p += 1
    return p


def _scan_kernel(buf, pos, stop, order, highest, table, insert, targets, state, seen):
    """Compiled with numba: accept whole lines of one section in buf[pos:stop] (stop follows a newline).

    Returns (pos, lines, code). A line is accepted when it reads ``-NUMBER`` (or an exact 0), TAB,
    ``order`` words separated by single spaces whose hashes are in ``table`` (inserted instead when
    ``insert``), and, below the highest order, optionally TAB and a NUMBER. ``state[t]`` counts
    lines whose first word hashes to ``targets[t]`` (t = 0, 1); ``state[2]`` is the number of filled
    slots in ``table``. It stops before a blank line or a line starting with a backslash
    (_SECTION_END), before any other line (_SUSPECT), or when the table is a quarter full
    (_TABLE_FULL: short probe chains matter more than the table's size). ``seen[k]`` remembers the
    last hash found in the table at word position k, which saves most lookups.
    """
    mask = table.size - 1
    lines = 0
    while pos < stop:
        c = buf[pos]
        if c == 10 or c == 92:
            return pos, lines, 1
        p = pos
        # Log probability: '-' and a number, or an exact zero.
        if c == 45:
            p = _number_end(buf, p + 1)
            if p < 0:
                return pos, lines, 2
        else:
            if c != 48:
                return pos, lines, 2
            p += 1
            if buf[p] == 46:
                p += 1
                while buf[p] == 48:
                    p += 1
        if buf[p] != 9:
            return pos, lines, 2
        p += 1
        # Words.
        for k in range(order):
            h = -3750763034362895579  # _FNV_OFFSET
            begin = p
            c = buf[p]
            while c != 32 and c != 9 and c != 10 and c != 13:
                h = (h ^ c) * 1099511628211  # _FNV_PRIME; int64 wraps around
                p += 1
                c = buf[p]
            if p == begin:
                return pos, lines, 2
            if h == 0:
                h = 1
            if h != seen[k]:  # lmplz sorts entries by suffix: the same words recur at a position
                slot = (h ^ (h >> 29)) & mask  # FNV's low bits mix poorly: fold the high bits in
                while table[slot] != 0 and table[slot] != h:
                    slot = (slot + 1) & mask
                if table[slot] == 0:
                    if not insert:
                        return pos, lines, 2
                    if 4 * (state[2] + 1) > table.size:
                        return pos, lines, 3
                    table[slot] = h
                    state[2] += 1
                seen[k] = h
            if k == 0:
                if h == targets[0]:
                    state[0] += 1
                elif h == targets[1]:
                    state[1] += 1
            if k < order - 1:
                if c != 32:
                    return pos, lines, 2
                p += 1
        # Optional backoff: TAB, optional '-', a number (never on the highest order: entry_problem decides).
        if c == 9:
            if highest:
                return pos, lines, 2
            p += 1
            if buf[p] == 45:
                p += 1
            p = _number_end(buf, p)
            if p < 0:
                return pos, lines, 2
            c = buf[p]
        if c != 10:
            return pos, lines, 2
        pos = p + 1
        lines += 1
    return pos, lines, 0


_compiled_kernel = None


def _load_kernel():
    """numba-compiled _scan_kernel (cached on disk by numba), or None when numba is unavailable."""
    global _compiled_kernel
    if _compiled_kernel is None:
        try:
            import numba
        except ImportError:
            return None
        from numba.extending import register_jitable

        register_jitable(_number_end)  # compiled with the kernel (LLVM inlines it); stays plain Python
        try:
            _compiled_kernel = numba.njit(cache=True, nogil=True)(_scan_kernel)
        except Exception:  # e.g. no writable cache directory: compile on every run instead
            _compiled_kernel = numba.njit(nogil=True)(_scan_kernel)
    return _compiled_kernel


class _PyVocab:
    """The 1-gram words as a Python set (pure-Python path)."""

    def __init__(self, expected: int):
        self.words: set[bytes] = set()

    def contains(self, word: bytes) -> bool:
        return word in self.words

    def add(self, word: bytes) -> None:
        self.words.add(word)


def _zeros(size: int):
    """A zeroed int64 array on huge pages where the kernel allows: np.empty + fill gets numpy's
    madvise(MADV_HUGEPAGE), np.zeros (calloc) does not, and random lookups in a table of many MB
    otherwise miss the TLB on most words."""
    import numpy as np

    table = np.empty(size, dtype=np.int64)
    table.fill(0)
    return table


class _HashVocab:
    """The 1-gram words as 64-bit FNV-1a hashes in an open-addressing table (compiled path)."""

    def __init__(self, expected: int):
        import numpy as np

        size = 1024
        while size < 4 * expected + 16:
            size *= 2
        self.table = _zeros(size)
        self.state = np.zeros(3, dtype=np.int64)  # <s> first, </s> first, filled slots (see _scan_kernel)

    def _slot(self, h: int) -> int:
        mask = self.table.size - 1
        slot = (h ^ (h >> 29)) & mask  # as in _scan_kernel
        while self.table[slot] != 0 and self.table[slot] != h:
            slot = (slot + 1) & mask
        return slot

    def contains(self, word: bytes) -> bool:
        return self.table[self._slot(_fnv(word))] != 0

    def add(self, word: bytes) -> None:
        if 4 * (self.state[2] + 1) > self.table.size:
            self.grow()
        h = _fnv(word)
        slot = self._slot(h)
        if self.table[slot] == 0:
            self.table[slot] = h
            self.state[2] += 1

    def grow(self) -> None:

        old = self.table[self.table != 0]
        self.table = _zeros(2 * self.table.size)
        for h in old.tolist():
            self.table[self._slot(h)] = h


@dataclass
class _SectionStats:
    entries: int = 0
    first_bos: int = 0  # entries whose first word is <s>
    first_eos: int = 0


class _Scanner:
    """Scans the entries of one section: compiled when possible (in threads above the 1-grams, whose
    scan fills the vocabulary table), else line by line in Python."""

    def __init__(self, unigrams: int, max_order: int, jit: bool | None, threads: int):
        kernel = _load_kernel() if jit is not False else None
        if jit and kernel is None:
            raise RuntimeError("check_arpa(jit=True) needs numba")
        self.kernel = kernel
        self.vocab = _HashVocab(unigrams) if kernel else _PyVocab(unigrams)
        self.pool = None
        if kernel is not None:
            import numpy as np

            self.targets = np.array([_fnv(BOS), _fnv(EOS)], dtype=np.int64)
            # Per thread: the kernel's state (first-word counts) and its memo of hashes found in the table.
            self.parts = [(np.zeros(3, dtype=np.int64), np.zeros(max_order, dtype=np.int64)) for _ in range(threads)]
            if threads > 1:  # the kernel releases the GIL: threads scan slices of the buffer in parallel
                from concurrent.futures import ThreadPoolExecutor

                self.pool = ThreadPoolExecutor(threads)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def section(self, rd: Reader, order: int, highest: bool, wanted: int) -> _SectionStats:
        stats = _SectionStats()
        while True:
            stop = rd.whole_lines()
            if not stop:
                raise truncated_in(rd, order, stats.entries, wanted, highest)
            if self.kernel is not None:
                code = self._run_kernel(rd, stop, order, highest, stats)
            else:
                code = self._run_python(rd, stop, order, highest, stats)
            if code == _SECTION_END:
                return stats
            if code == _SUSPECT:
                self._one_line(rd, order, highest, stats)

    def _run_kernel(self, rd: Reader, stop: int, order: int, highest: bool, stats: _SectionStats) -> int:
        import numpy as np

        buf = np.frombuffer(rd.buf, dtype=np.uint8)
        if order == 1:
            return self._fill_vocabulary(buf, rd, stop, stats)
        spans = self._split(rd, stop)
        calls = [(buf, start, end, order, highest, self.vocab.table, False, self.targets, state, seen)
                 for (start, end), (state, seen) in zip(spans, self.parts, strict=False)]
        for call in calls:
            call[8][:2] = 0
        if len(calls) == 1:
            results = [self.kernel(*calls[0])]
        else:
            results = list(self.pool.map(lambda args: self.kernel(*args), calls))
        # Slices count in order; after one that stopped early, the rest is scanned again from there.
        for call, (pos, lines, code) in zip(calls, results, strict=True):
            rd.advance(pos, lines)
            stats.entries += lines
            stats.first_bos += int(call[8][0])
            stats.first_eos += int(call[8][1])
            if code != _DONE:
                return code
        return _DONE

    def _split(self, rd: Reader, stop: int) -> list[tuple[int, int]]:
        """The whole lines buf[rd.start:stop] cut at line ends into one slice per thread."""
        size = stop - rd.start
        if len(self.parts) == 1 or size < _PARALLEL_MIN:
            return [(rd.start, stop)]
        cuts = [rd.start]
        for i in range(1, len(self.parts)):
            cut = rd.buf.find(b"\n", rd.start + i * size // len(self.parts), stop) + 1
            if cut > cuts[-1]:
                cuts.append(cut)
        if cuts[-1] != stop:
            cuts.append(stop)
        return list(zip(cuts[:-1], cuts[1:], strict=True))

    def _fill_vocabulary(self, buf, rd: Reader, stop: int, stats: _SectionStats) -> int:
        """The 1-grams, in one thread: the kernel inserts their hashes into the table."""
        state, seen = self.vocab.state, self.parts[0][1]
        state[:2] = 0
        while True:
            pos, lines, code = self.kernel(buf, rd.start, stop, 1, False, self.vocab.table, True, self.targets,
                                           state, seen)
            rd.advance(pos, lines)
            stats.entries += lines
            if code != _TABLE_FULL:
                break
            self.vocab.grow()
        stats.first_bos += int(state[0])
        stats.first_eos += int(state[1])
        return code

    def _run_python(self, rd: Reader, stop: int, order: int, highest: bool, stats: _SectionStats) -> int:
        block = bytes(memoryview(rd.buf)[rd.start:stop])
        cut = section_stop(block)
        if cut >= 0:
            block = block[:cut]
        check_lines(block, rd.line_no + 1, order, highest, self.vocab.contains)
        for line in block_lines(block):
            self._count(line, order, stats)
        lines = block.count(b"\n")
        rd.advance(rd.start + len(block), lines)
        stats.entries += lines
        return _SECTION_END if cut >= 0 else _DONE

    def _one_line(self, rd: Reader, order: int, highest: bool, stats: _SectionStats) -> None:
        line = rd.readline()
        problem = entry_problem(line, order, highest, self.vocab.contains)
        if problem:
            raise ArpaError(rd.line_no, problem)
        self._count(line, order, stats)
        stats.entries += 1

    def _count(self, line: bytes, order: int, stats: _SectionStats) -> None:
        words = split_words(line.split(b"\t")[1])
        if order == 1:
            self.vocab.add(words[0])
        stats.first_bos += words[0] == BOS
        stats.first_eos += words[0] == EOS


def check_arpa(path: str | os.PathLike, jit: bool | None = None, threads: int | None = None) -> CheckReport:
    """Validate ``path`` (``.gz`` allowed) in one streaming pass; raise ArpaError at the first problem.

    ``jit``: None uses the compiled scanner when numba is importable, False forces pure Python.
    ``threads``: compiled scanners working on each buffer (default: CPU cores, at most 4).
    A missing </s> or <s> is not an error here (the file is well formed) but makes ``report.ok``
    False, and ``report.notes`` says why and what to do.
    """
    t0 = time.perf_counter()
    path = Path(path)
    with open_input(path) as (raw, _):
        rd = Reader(raw)
        header = read_header(rd)
        threads = threads or min(4, os.cpu_count() or 1)
        scanner = _Scanner(header.counts[0], len(header.counts), jit, threads)
        stats: list[_SectionStats] = []
        try:
            for order, wanted in enumerate(header.counts, start=1):
                expect_section(rd, order)
                first_line_no = rd.line_no + 1
                found = scanner.section(rd, order, order == len(header.counts), wanted)
                if found.entries != wanted:
                    raise count_mismatch(rd.line_no + 1, first_line_no, order, found.entries, wanted)
                stats.append(found)
        finally:
            scanner.close()
        expect_end(rd, len(header.counts))
        size = rd.offset
    seconds = time.perf_counter() - t0
    bos_bigrams = stats[1].first_bos if len(stats) > 1 else 0
    report = CheckReport(str(path), header.counts, stats[0].first_bos > 0, stats[0].first_eos > 0,
                         bos_bigrams, size, seconds, scanner.kernel is not None)
    report.notes = _diagnose(report)
    return report


def _diagnose(report: CheckReport) -> list[str]:
    notes = []
    if not report.has_bos:
        notes.append("no <s> among the 1-grams: kenlm.Model refuses the file; rebuild the LM")
    if not report.has_eos:
        notes.append("no </s> among the 1-grams: kenlm.Model refuses the file "
                     "(`w2v-fix-arpa IN OUT` patches it in seconds)")
    if report.one_line_corpus:
        notes.append("this is the one-line-corpus signature (no </s>, a single bigram starting with <s>): "
                     "lmplz saw the whole corpus as one sentence. Rebuild it from a text file with one "
                     "sentence per line, each ending with a newline: the patch only makes it load")
    return notes

