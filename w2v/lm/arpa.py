"""ARPA n-gram files for KenLM: the format, and reading it, for the fixer and the checker.

This module holds what :mod:`w2v.lm.arpa_fix` (adds a missing ``</s>``) and
:mod:`w2v.lm.arpa_check` (checks everything KenLM requires) share:

* :class:`ArpaError`, raised with the 1-based line number of the first problem;
* :class:`Reader`, which reads a stream in big chunks and hands out whole lines or blocks of whole
  lines with their file offsets and line numbers, and :func:`open_input` (gzip by the ``.gz`` suffix);
* the structure: :func:`read_header` (``\\data\\`` and the ``ngram N=count`` lines, naming the
  usual wrong inputs: gzip data, a KenLM binary, CRLF line endings), :func:`expect_section`,
  :func:`expect_end`, and the errors for a section whose length is wrong (:func:`count_mismatch`,
  :func:`truncated`);
* one entry: :func:`entry_problem`, the authority that words every error message about an entry
  (TAB-separated fields, log probs <= 0, no backoff on the highest order, each word a 1-gram), and
  :func:`check_lines`, :func:`block_lines`, :func:`section_stop`, :func:`split_words` on blocks of
  entry lines.

Standard library only: the fixer imports it without numpy.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BOS = b"<s>"
EOS = b"</s>"
_UNK_WORDS = (b"<unk>", b"<UNK>")  # KenLM accepts these in n-grams even when no 1-gram lists them
_CHUNK = 8 << 20  # Reader's default read size (the check's); also the longest line it accepts
_KENLM_BINARY_MAGIC = b"mmap lm "
COUNT_LINE = re.compile(rb"ngram ([0-9]+)=([0-9]+)[ \t]*\n?")  # a header line: order, count

Contains = Callable[[bytes], bool]  # is this word among the 1-grams?


class ArpaError(Exception):
    """The file is not an ARPA that KenLM can load; ``line_no`` is 1-based (None: not tied to a line)."""

    def __init__(self, line_no: int | None, message: str):
        self.line_no = line_no
        self.message = message
        super().__init__(f"line {line_no}: {message}" if line_no is not None else message)


# ---------------------------------------------------------------------------------------------
# Reading: big chunks, whole lines, absolute offsets and line numbers.


class Reader:
    """Reads a binary stream in big chunks and hands out whole lines or blocks of whole lines.

    The unread data is ``buf[start:end]``; ``offset`` and ``line_no`` count what was handed out.
    ``tee``, when given, receives every byte read from the stream (the fixer replays the head).
    """

    def __init__(self, raw: BinaryIO, tee: BinaryIO | None = None, chunk: int = _CHUNK):
        self.raw = raw
        self.tee = tee
        self.buf = bytearray(chunk)
        self.start = 0
        self.end = 0
        self.base = 0  # file offset of buf[0]
        self.line_no = 0  # lines handed out so far
        self.eof = False

    @property
    def offset(self) -> int:
        return self.base + self.start

    def fill(self) -> bool:
        """Read more after the unread data; False when nothing more came (end of file)."""
        if self.eof:
            return False
        keep = self.end - self.start
        if keep == len(self.buf):
            raise ArpaError(self.line_no + 1, f"a line longer than {len(self.buf) >> 10} KiB: not an ARPA file")
        if self.start:
            self.buf[:keep] = self.buf[self.start:self.end]
            self.base += self.start
            self.start, self.end = 0, keep
        view = memoryview(self.buf)[keep:]
        try:
            n = self.raw.readinto(view)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ArpaError(None, f"cannot decompress: {e}") from e
        if not n:
            self.eof = True
            return False
        if self.tee is not None:
            self.tee.write(view[:n])
        self.end += n
        return True

    def readline(self) -> bytes:
        """The next line with its newline; the last line of a file may lack one; b'' at the end."""
        while True:
            i = self.buf.find(b"\n", self.start, self.end)
            if i >= 0:
                return self._take(i + 1)
            if not self.fill():
                return self._take(self.end) if self.end > self.start else b""

    def _take(self, stop: int) -> bytes:
        line = bytes(self.buf[self.start:stop])
        self.start = stop
        self.line_no += 1
        return line

    def whole_lines(self) -> int:
        """Make sure at least one whole line is buffered; return the end of the last one (0: none left)."""
        while True:
            i = self.buf.rfind(b"\n", self.start, self.end)
            if i >= 0:
                return i + 1
            if not self.fill():
                return 0

    def advance(self, stop: int, lines: int) -> None:
        self.start = stop
        self.line_no += lines


@contextmanager
def open_input(path: Path) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open for reading: gzip by suffix; also yields the fd when it is a plain regular file."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            yield f, None
        return
    with open(path, "rb", buffering=0) as f:
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
        yield f, (f.fileno() if regular else None)


def show(data: bytes, limit: int = 60) -> str:
    """A line or field for an error message: decoded, quoted, cut at ``limit`` characters."""
    text = data.rstrip(b"\n").decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------------------------------------
# Structure shared by fixing and checking: the header, section headers, one entry.


@dataclass
class Header:
    """The ``\\data\\`` header: entries per order, and where its ``ngram 1=`` line is (the fixer edits it)."""

    counts: list[int]
    n1_line: bytes  # the "ngram 1=" line as read
    n1_offset: int  # its file offset
    n1_line_no: int


def _not_arpa(line: bytes) -> str:
    if line.startswith(b"\x1f\x8b"):
        return "gzip data, not ARPA text: name the file *.gz (or gunzip it)"
    if line.startswith(_KENLM_BINARY_MAGIC):
        return "a KenLM binary (build_binary output), not an ARPA file"
    if line.rstrip(b"\n").endswith(b"\r"):
        return "Windows line endings (CRLF): KenLM needs \\n only (convert with dos2unix)"
    if b"\x00" in line or not _is_utf8(line):
        return "binary data, not an ARPA file (missing \\data\\)"
    return f"missing \\data\\: expected it as the first non-empty line, got {show(line)}"


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_header(rd: Reader) -> Header:
    """Parse ``\\data\\`` and the ``ngram N=count`` lines (KenLM allows blank and # lines before)."""
    line = rd.readline()
    while line and (not line.strip() or line.startswith(b"#")):
        line = rd.readline()
    if not line:
        raise ArpaError(rd.line_no + 1, "empty file: missing \\data\\")
    if line.rstrip(b"\n") != b"\\data\\":
        raise ArpaError(rd.line_no, _not_arpa(line))
    counts: list[int] = []
    n1 = (b"", 0, 0)
    while True:
        offset = rd.offset
        line = rd.readline()
        if not line:
            raise ArpaError(rd.line_no + 1, "truncated: file ends inside the \\data\\ header")
        if not line.strip():
            break
        m = COUNT_LINE.fullmatch(line)
        if m is None:
            raise ArpaError(rd.line_no, f"expected 'ngram N=count' or a blank line in the header, got {show(line)}")
        if int(m[1]) != len(counts) + 1:
            raise ArpaError(rd.line_no, f"header orders must run 1, 2, 3...: got 'ngram {int(m[1])}=' "
                                        f"after {len(counts)} count lines")
        if len(counts) == 0:
            n1 = (line, offset, rd.line_no)
        counts.append(int(m[2]))
    if not counts:
        raise ArpaError(rd.line_no, "the \\data\\ header lists no 'ngram N=count' lines")
    if len(counts) == 1:  # lm/model.cc: "This ngram implementation assumes at least a bigram model"
        raise ArpaError(n1[2], "only 1-grams: KenLM needs at least a bigram model (lmplz -o 2 or more)")
    return Header(counts, *n1)


def _expect_line(rd: Reader, wanted: bytes, what: str) -> None:
    """Skip blank lines (KenLM does), then require ``wanted`` (without its newline)."""
    line = rd.readline()
    while line and not line.strip():
        line = rd.readline()
    if not line:
        raise ArpaError(rd.line_no + 1, f"truncated: file ends where {what} should be")
    if line.rstrip(b"\n") != wanted:
        raise ArpaError(rd.line_no, f"expected {wanted.decode()} ({what}), got {show(line)}")


def expect_section(rd: Reader, order: int) -> None:
    _expect_line(rd, b"\\%d-grams:" % order, f"the start of the {order}-grams")


def expect_end(rd: Reader, max_order: int) -> None:
    """``\\end\\`` after the last section, then nothing but blank lines."""
    line = rd.readline()
    while line and not line.strip():
        line = rd.readline()
    if not line:
        raise ArpaError(rd.line_no + 1, f"missing \\end\\: the file stops after the {max_order}-grams")
    if line.rstrip(b"\n") != b"\\end\\":
        raise ArpaError(rd.line_no, f"expected \\end\\ after the {max_order}-grams, got {show(line)}")
    line = rd.readline()
    while line:
        if line.strip():
            raise ArpaError(rd.line_no, f"text after \\end\\: {show(line)}")
        line = rd.readline()


def _parse_float(text: bytes) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def entry_problem(line: bytes, order: int, highest: bool, contains: Contains | None) -> str | None:
    """What KenLM would reject in one entry line, or None. The authority for every error message."""
    body = line[:-1] if line.endswith(b"\n") else line
    if body.endswith(b"\r"):
        return "Windows line ending (CRLF): KenLM needs \\n only"
    fields = body.split(b"\t")
    if len(fields) not in (2, 3):
        return (f"expected 'log10prob<TAB>{order} word(s)[<TAB>backoff]' ({len(fields) - 1} TABs), "
                f"got {show(body)}")
    if fields[0] != fields[0].strip() or fields[1].endswith(b" "):
        return f"a space before a TAB or the newline: {show(body)}"  # KenLM stops at it
    prob = _parse_float(fields[0])
    if prob is None:
        return f"log probability {show(fields[0])} is not a number"
    if prob > 0:
        return f"positive log probability {fields[0].decode(errors='replace')} (log10 probs must be <= 0)"
    words = split_words(fields[1])
    if len(words) != order:
        return f"expected {order} word(s) in a {order}-gram entry, got {len(words)}: {show(fields[1])}"
    if len(fields) == 3:
        backoff = _parse_float(fields[2])
        if backoff is None:
            return f"backoff {show(fields[2])} is not a number"
        if highest and backoff != 0:
            return f"backoff {fields[2].decode(errors='replace')} on a highest-order ({order}-gram) entry"
    if order > 1 and contains is not None:
        for w in words:
            if w not in _UNK_WORDS and not contains(w):
                return f"word {show(w)} is not among the 1-grams (KenLM needs every word as a 1-gram)"
    return None


def split_words(field: bytes) -> list[bytes]:
    """The words of an entry as KenLM reads them: runs of bytes between spaces (or carriage returns)."""
    return [w for w in field.replace(b"\r", b" ").split(b" ") if w]


def check_lines(block: bytes, first_line_no: int, order: int, highest: bool,
                 contains: Contains | None) -> None:
    """Per-line check of a block of whole lines; raises at the first bad one."""
    for i, line in enumerate(block_lines(block)):
        problem = entry_problem(line, order, highest, contains)
        if problem:
            raise ArpaError(first_line_no + i, problem)


def block_lines(block: bytes) -> list[bytes]:
    """The lines of a block of whole lines, without their newlines (not splitlines: a lone \\r is no break)."""
    return block.split(b"\n")[:-1]


def section_stop(block: bytes) -> int:
    """Index of the first line that ends a section (blank or starting with a backslash), or -1."""
    if block[:1] in (b"\n", b"\\"):
        return 0
    stops = [i + 1 for i in (block.find(b"\n\n"), block.find(b"\n\\")) if i >= 0]
    return min(stops) if stops else -1


def count_mismatch(end_line_no: int, first_line_no: int, order: int, found: int, wanted: int) -> ArpaError:
    """The error for a section whose entry count is not the header's, at its first problem: the
    first entry beyond the header's count (the section starts at ``first_line_no``), or for too
    few entries the line that ends the section (``end_line_no``)."""
    line_no = first_line_no + wanted if found > wanted else end_line_no
    return ArpaError(line_no, f"the {order}-grams section has {found} entries but the header says "
                              f"ngram {order}={wanted}")


def truncated(line_no: int, partial: bool, order: int, found: int, wanted: int, last: bool) -> ArpaError:
    """The error for a file that ends among the entries of a section (no blank line after them).

    ``partial``: the file ends inside a line, which is ``line_no``; else ``line_no`` is the line
    after the last one. ``last``: this is the highest order (so only ``\\end\\`` is missing).
    """
    if partial:
        return ArpaError(line_no, f"truncated: the file ends in the middle of a line in the {order}-grams "
                                  f"({found} of {wanted} entries complete)")
    if found < wanted:
        return ArpaError(line_no, f"truncated: the file ends in the {order}-grams ({found} of {wanted} entries)")
    if found > wanted:
        return count_mismatch(line_no, line_no - found, order, found, wanted)
    if last:
        return ArpaError(line_no, f"missing \\end\\: the file stops after the {order}-grams")
    return ArpaError(line_no, f"truncated: the file stops after the {order}-grams")


def truncated_in(rd: Reader, order: int, found: int, wanted: int, last: bool) -> ArpaError:
    """:func:`truncated` for a reader at the end of its file (it reads the partial last line, if any)."""
    partial = bool(rd.readline())
    return truncated(rd.line_no if partial else rd.line_no + 1, partial, order, found, wanted, last)


