"""Adding the missing ``</s>`` to an ARPA file, quickly: :func:`fix_arpa` and :class:`FixResult`.

Why ``</s>`` goes missing: lmplz appends ``</s>`` only when it reads a newline, so a corpus written
as one line (``" ".join(texts)``) gives an ARPA without it, and ``kenlm.Model`` refuses such a
file. The real fix is to rebuild from one sentence per line, each ending with a newline. The
``</s>`` loop from Hugging Face's blog post "Boosting Wav2Vec2 with n-grams in Transformers" (kept
verbatim as ``ARPA_EOS_LOOP`` in ``benchmarks/baselines.py``) patches the file instead: it copies
the ``<s>`` 1-gram line as ``</s>`` and raises ``ngram 1=`` by one. :func:`fix_arpa` does exactly
that patch (byte for byte the loop's output on normal files), but

* streams: only the ``\\data\\`` header and the 1-gram section are parsed (the head scan);
  everything after them (all higher orders, nearly all of the bytes) is copied by the kernel for
  plain files, while this thread counts it (:class:`_SectionCounter`);
* never writes a file KenLM's loader would refuse for its structure: the entry count of every
  section is checked against the header, and the section order and ``\\end\\``; on a mismatch
  it raises with the line and the two counts, and no output appears;
* raises the count as an integer (the loop's ``str.replace`` turns ``ngram 1=1`` into ``ngram 2=2``);
* is idempotent: a file that already has ``</s>`` comes out unchanged;
* is atomic (:class:`w2v.atomic.AtomicFile`): the output appears under its name only when complete.

What the entries of the higher orders hold (log probabilities, backoffs, that every word is a
1-gram) is not parsed: :func:`w2v.lm.arpa_check.check_arpa` (``w2v-fix-arpa --check``) does that,
at the cost of a full parse. Standard library only: fixing from the command line imports neither
numpy nor numba.
"""

from __future__ import annotations

import errno
import gzip
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from w2v.atomic import AtomicFile
from w2v.lm.arpa import (
    BOS,
    COUNT_LINE,
    EOS,
    ArpaError,
    Header,
    Reader,
    check_lines,
    count_mismatch,
    expect_section,
    open_input,
    read_header,
    section_stop,
    show,
    truncated,
    truncated_in,
)

_FIX_CHUNK = 1 << 20  # read size of the head scan (the header and the 1-grams)
_COUNT_CHUNK = 256 << 10  # read size of the section count: small enough for the CPU caches
_COPY_PIECE = 64 << 20  # the kernel copy's step: how soon it stops after the count found a problem
_MAX_LINE = 8 << 20  # the longest line the section count (like the checker) accepts
_SPOOL_IN_MEMORY = 8 << 20  # the fixer keeps the header + 1-grams in memory up to this size, then on disk


@dataclass
class FixResult:
    """What :func:`fix_arpa` did; ``message`` says it in a sentence for people."""

    src: str
    dst: str
    changed: bool  # False: the input already had </s> and dst is an identical copy
    unigrams_before: int
    unigrams_after: int
    bytes_written: int  # uncompressed bytes
    seconds: float
    message: str


# Everything but TAB, newline and space, deleted by bytes.translate to see a block's field layout.
_NOT_LAYOUT = bytes(c for c in range(256) if c not in b"\t\n ")


def _plain_unigram_lines(block: bytes) -> int | None:
    """The number of lines when each line of ``block`` passes bytes-level 1-gram checks, else None.

    A handful of C-speed passes instead of a Python loop: one or two TABs per line, no spaces (a
    1-gram is one word), and each log prob starts with '-' or is an exact 0 (lmplz writes 0 for
    <s>). A blank line or a section header fails too, so a block that passes lies inside the
    section. None means: look closer (section_stop, check_lines).
    """
    layout = block.translate(None, _NOT_LAYOUT).replace(b"\t\t\n", b"\t\n")  # the backoff is optional
    lines = layout.count(b"\n")
    if layout != b"\t\n" * lines:
        return None
    # The block ends with a newline, so each "\n-" found starts a line of the block.
    negative = block.count(b"\n-") + (block[:1] == b"-")
    if negative != lines and negative + block.count(b"\n0\t") + block.startswith(b"0\t") != lines:
        return None
    return lines


def _find_word_line(block: bytes, word: bytes) -> tuple[int, int] | None:
    """(start, end) of the 1-gram line whose word is ``word`` in a block of 1-gram lines."""
    needle = b"\t" + word
    i = block.find(needle)
    while i >= 0:
        after = i + len(needle)
        if block[after:after + 1] in (b"\t", b"\n"):
            return block.rfind(b"\n", 0, i) + 1, block.index(b"\n", i) + 1
        i = block.find(needle, after)
    return None


@dataclass
class _Head:
    """What the head scan found: the header, the 1-gram count, the <s> and </s> lines."""

    header: Header
    unigrams: int
    bos_line: bytes | None
    bos_end: int  # file offset right after the <s> line
    bos_line_no: int
    eos_line_no: int  # 0: no </s>
    head_end: int  # file offset of the end of the 1-gram entries
    sections_start: int  # file offset right after the \\2-grams: line
    sections_line_no: int  # the line number there


def _scan_head(rd: Reader) -> _Head:
    """Read and check the header and the 1-grams; find the <s> and </s> lines."""
    header = read_header(rd)
    expect_section(rd, 1)
    first_line_no = rd.line_no + 1
    wanted = header.counts[0]  # and there are higher orders: read_header saw to it
    found, bos_line, bos_end, bos_line_no, eos_line_no = 0, None, 0, 0, 0
    while True:
        stop = rd.whole_lines()
        if not stop:
            raise truncated_in(rd, 1, found, wanted, last=False)
        block = bytes(memoryview(rd.buf)[rd.start:stop])
        lines, cut = _plain_unigram_lines(block), -1
        if lines is None:
            cut = section_stop(block)
            if cut >= 0:
                block = block[:cut]
                lines = _plain_unigram_lines(block)
            if lines is None:  # raises at a bad line; unusual but valid lines (a log prob 0.0) pass
                check_lines(block, rd.line_no + 1, 1, False, None)
                lines = block.count(b"\n")
        if bos_line is None and (span := _find_word_line(block, BOS)):
            bos_line = block[span[0]:span[1]]
            bos_end = rd.offset + span[1]
            bos_line_no = rd.line_no + block.count(b"\n", 0, span[1])
        if not eos_line_no and (span := _find_word_line(block, EOS)):
            eos_line_no = rd.line_no + block.count(b"\n", 0, span[1])
        rd.advance(rd.start + len(block), lines)
        found += lines
        if cut >= 0:
            break
    if found != wanted:
        raise count_mismatch(rd.line_no + 1, first_line_no, 1, found, wanted)
    head_end = rd.offset
    expect_section(rd, 2)
    return _Head(header, found, bos_line, bos_end, bos_line_no, eos_line_no, head_end, rd.offset, rd.line_no + 1)



class _SectionCounter:
    """Counts the entries of the 2-gram and higher sections and checks them against the header, in
    bytes fed in file order from just after the ``\\2-grams:`` line; also the section order, the
    ``\\end\\`` line and that nothing but blank lines follows it.

    Nothing is parsed per line in Python: a block's newlines are counted by ``bytes.replace`` (one
    memchr per line inside CPython, faster than ``bytes.count``), and section lines are found by
    searching for a backslash (memchr again) at the start of a line. A blank line inside a section
    counts as an entry there, so it shows as a count mismatch; what the entries hold is not looked
    at (``w2v-fix-arpa --check`` does that).
    """

    def __init__(self, counts: list[int], line_no: int):
        self.counts = counts
        self.order = 2  # the section being read
        self.line_no = line_no  # of the next line to come
        self.lines = 0  # lines of this section so far, blank ones at its end included
        self.blanks = 0  # blank lines at its end so far
        self.ended = False  # \\end\\ seen
        self.carry = b""  # a line not yet complete

    def feed(self, data: bytes) -> None:
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            self.carry += data
            if len(self.carry) > _MAX_LINE:  # what the checker refuses too: memory stays bounded
                raise ArpaError(self.line_no, f"a line longer than {_MAX_LINE >> 20} MiB: not an ARPA file")
            return
        i = data.find(b"\\")
        while i >= 0 and (data[i - 1] != 10 if i else self.carry):  # inside an entry: no section line
            i = data.find(b"\\", i + 1)
        if (i < 0 or i >= cut) and not self.ended and not self.carry.startswith(b"\\"):
            self._lines(data, cut, continues=bool(self.carry))  # the usual case: entries only
            self.carry = data[cut:]
            return
        block, self.carry = self.carry + data[:cut], data[cut:]
        pos = 0
        while pos < len(block):
            i = block.find(b"\\", pos)
            while i > pos and block[i - 1] != 10:
                i = block.find(b"\\", i + 1)
            text = block[pos:] if i < 0 else block[pos:i]
            if text:
                self._body(text)
            if i < 0:
                return
            end = block.index(b"\n", i) + 1
            self._section_line(block[i:end])
            pos = end

    def finish(self) -> None:
        """At the end of the file: raise unless the last section and \\end\\ were complete."""
        if self.carry:  # a last line without its newline
            line, self.carry = self.carry, b""
            if line.startswith(b"\\"):
                self._section_line(line)
            elif not self.ended:
                found, wanted = self.lines - self.blanks, self.counts[self.order - 1]
                raise truncated(self.line_no, True, self.order, found, wanted, self._last)
            else:
                self._body(line + b"\n")
        if not self.ended:
            found, wanted = self.lines - self.blanks, self.counts[self.order - 1]
            raise truncated(self.line_no - self.blanks, False, self.order, found, wanted, self._last)

    @property
    def _last(self) -> bool:
        return self.order == len(self.counts)

    def _lines(self, data: bytes, cut: int, continues: bool) -> None:
        """Count the complete lines of ``data`` (those before ``cut``) as entries of this section;
        ``continues``: its first line is the end of one begun in the previous chunk (``carry``).
        Blank lines (empty or whitespace only, which KenLM skips too) at the end are counted apart:
        they end the section if a section line follows them."""
        n = len(data) - len(data.replace(b"\n", b""))  # the newlines: all lie before cut
        blank, end = 0, cut - 1  # walk back over the blank lines that end the data
        while True:
            start = data.rfind(b"\n", 0, end) + 1
            line = (self.carry if start == 0 and continues else b"") + data[start:end]
            if line.strip():
                break
            blank += 1
            if start == 0:  # every line of the data is blank: the run goes on from before
                blank += self.blanks
                break
            end = start - 1
        self.blanks = blank
        self.lines += n
        self.line_no += n

    def _body(self, text: bytes) -> None:
        """Whole lines of entries (or blank lines) inside a section, or blank lines after \\end\\."""
        if not self.ended:
            self._lines(text, len(text), continues=False)
            return
        if text.strip():
            lines = text.split(b"\n")
            first = next(k for k, line in enumerate(lines) if line.strip())
            raise ArpaError(self.line_no + first, f"text after \\end\\: {show(lines[first])}")
        self.line_no += text.count(b"\n")

    def _section_line(self, line: bytes) -> None:
        if self.ended:
            raise ArpaError(self.line_no, f"text after \\end\\: {show(line)}")
        found, wanted = self.lines - self.blanks, self.counts[self.order - 1]
        if found != wanted:
            raise count_mismatch(self.line_no - self.blanks, self.line_no - self.lines, self.order, found, wanted)
        expected = b"\\end\\" if self._last else b"\\%d-grams:" % (self.order + 1)
        if line.rstrip(b"\n") != expected:
            what = f"after the {self.order}-grams" if self._last else f"the start of the {self.order + 1}-grams"
            raise ArpaError(self.line_no, f"expected {expected.decode()} ({what}), got {show(line)}")
        if self._last:
            self.ended = True
        else:
            self.order += 1
        self.lines = self.blanks = 0
        self.line_no += 1


def _count_sections(fd: int, head: _Head) -> None:
    """Read a plain file from where its sections start and check them (:class:`_SectionCounter`)."""
    counter = _SectionCounter(head.header.counts, head.sections_line_no)
    offset = head.sections_start
    while data := os.pread(fd, _COUNT_CHUNK, offset):
        counter.feed(data)
        offset += len(data)
    counter.finish()

def _require_end(tail: bytes, size: int) -> None:
    """A cheap check before any output exists: the file must end with an \\end\\ line (which
    catches truncation); the section count finds the line of any other problem while copying."""
    body = tail.rstrip()
    if body.endswith(b"\\end\\") and body[-6:-5] in (b"\n", b""):
        return
    at = tail.rfind(b"\n\\end\\\n")
    if at >= 0:
        after = tail[at + 7:].lstrip().split(b"\n", 1)[0]
        raise ArpaError(None, f"text after \\end\\: {show(after)}")
    raise ArpaError(None, f"missing \\end\\: the file does not end with it (truncated at {size} bytes?); "
                          "`w2v-fix-arpa --check` names the line")


def _file_tail(fd: int, n: int = 4096) -> tuple[bytes, int]:
    size = os.fstat(fd).st_size
    return os.pread(fd, n, max(0, size - n)), size


def _edits(head: _Head) -> list[tuple[int, int, bytes]]:
    """(start, end, replacement) byte edits that add </s>, as the blog's loop does; [] if not needed."""
    if head.eos_line_no:
        return []
    if head.bos_line is None:
        raise ArpaError(head.header.n1_line_no, "neither <s> nor </s> among the 1-grams: nothing to copy "
                                                "</s> from; rebuild the LM (one sentence per line)")
    n1 = head.header.n1_line
    m = COUNT_LINE.fullmatch(n1)
    assert m is not None  # read_header matched it
    new_n1 = n1[:m.start(2)] + str(head.unigrams + 1).encode() + n1[m.end(2):]
    start = head.header.n1_offset
    return [(start, start + len(n1), new_n1), (head.bos_end, head.bos_end, head.bos_line.replace(BOS, EOS))]


def _copy_exact(src: BinaryIO, dst: BinaryIO, count: int) -> None:
    while count > 0:
        data = src.read(min(count, 1 << 20))
        if not data:
            raise ArpaError(None, "input shrank while it was being copied")
        dst.write(data)
        count -= len(data)


def _write_head(source: BinaryIO, edits: list[tuple[int, int, bytes]], head_end: int, out: BinaryIO) -> None:
    """Copy the head [0, head_end) of ``source`` into ``out`` with the edits applied."""
    source.seek(0)
    pos = 0
    for start, end, replacement in edits:
        _copy_exact(source, out, start - pos)
        source.seek(end)
        out.write(replacement)
        pos = end
    _copy_exact(source, out, head_end - pos)


def _kernel_copy(src_fd: int, dst_fd: int, offset: int, stop: threading.Event) -> int:
    """Copy src_fd[offset:] to dst_fd's position inside the kernel; returns bytes copied (so far,
    when ``stop`` is set: it is checked between pieces of _COPY_PIECE bytes).

    copy_file_range, else sendfile, else read/write: the first two never bring the data into
    Python and run at page-cache speed.
    """
    total = 0
    try:
        while not stop.is_set() and (n := os.copy_file_range(src_fd, dst_fd, _COPY_PIECE, offset + total)):
            total += n
        return total
    except OSError as e:
        if total or e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
            raise
    try:
        while not stop.is_set() and (n := os.sendfile(dst_fd, src_fd, offset + total, _COPY_PIECE)):
            total += n
        return total
    except OSError as e:
        if total or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while not stop.is_set() and (data := os.pread(src_fd, 1 << 20, offset + total)):
        view = memoryview(data)
        while view:
            view = view[os.write(dst_fd, view):]
        total += len(data)
    return total


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def fix_arpa(src: str | os.PathLike, dst: str | os.PathLike) -> FixResult:
    """Write ``src`` to ``dst`` with ``</s>`` added (as the blog's loop does) when it is missing.

    ``.gz`` on either name means gzip. ``dst`` may be ``src``. Checks the header and the 1-grams,
    and while copying the rest the entry count of every section against the header, the section
    order and ``\\end\\``; not what the entries hold (:func:`w2v.lm.arpa_check.check_arpa` does).
    Raises ArpaError on malformed input; ``dst`` is then left untouched and no temporary remains.
    """
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    with open_input(src) as (raw, src_fd), _head_copy(src_fd) as spool:
        rd = Reader(raw, tee=spool, chunk=_FIX_CHUNK)
        head = _scan_head(rd)
        if src_fd is not None:
            _require_end(*_file_tail(src_fd))  # cheap, and before any output exists
        edits = _edits(head)
        if not edits and _same_file(src, dst) and src.suffix == dst.suffix:
            if src_fd is not None:
                _count_sections(src_fd, head)
                written = os.path.getsize(src)
            else:
                written = _drain(rd, spool, head)
        else:
            written = _write_fixed(rd, raw if spool is None else spool, head, edits, src_fd, dst,
                                   in_place=_same_file(src, dst))
    return _fix_result(src, dst, head, edits, written, time.perf_counter() - t0)


@contextmanager
def _head_copy(src_fd: int | None) -> Iterator[BinaryIO | None]:
    """Where the head scan keeps what it read: nowhere for a plain file (it is read again), else a
    spool, in memory while small (gzip cannot seek cheaply, a pipe not at all)."""
    if src_fd is not None:
        yield None
        return
    with tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY) as spool:
        yield spool


def _write_fixed(rd: Reader, head_source: BinaryIO, head: _Head, edits: list[tuple[int, int, bytes]],
                 src_fd: int | None, dst: Path, in_place: bool) -> int:
    """Edited head, then the rest, its sections counted on the way: by the kernel when both ends are
    plain files (the count reads the page cache beside it, on the other core), else through a
    buffer. ``head_source`` is the input itself when it is a plain file, else the spool of what the
    head scan read."""
    # A fixed copy is cheap to make again: no fsync, unless it replaces the input (the only copy).
    with AtomicFile(dst, fsync=in_place, buffering=0) as out_raw:
        out: BinaryIO = out_raw
        if dst.suffix == ".gz":
            out = gzip.GzipFile(filename=dst.stem, mode="wb", fileobj=out_raw, compresslevel=6, mtime=0)
        try:
            _write_head(head_source, edits, head.head_end, out)
            written = head.head_end + sum(len(r) - (e - s) for s, e, r in edits)
            if src_fd is not None and out is out_raw:
                written += _copy_and_count(src_fd, out_raw.fileno(), head)
            else:
                counter = _SectionCounter(head.header.counts, head.sections_line_no)
                skip = head.sections_start - head.head_end  # the blank line(s) and \\2-grams:
                if src_fd is not None:
                    rd.raw.seek(head.head_end)
                    written += _copy_stream(rd.raw, out, counter, skip)
                else:  # gzip or a pipe: what the head scan read ahead is in the spool
                    head_source.seek(head.head_end)
                    n1 = _copy_stream(head_source, out, counter, skip)
                    written += n1 + _copy_stream(rd.raw, out, counter, max(0, skip - n1))
                counter.finish()
        finally:
            if out is not out_raw:
                out.close()  # writes the gzip trailer; leaves out_raw open
    return written


def _copy_and_count(src_fd: int, dst_fd: int, head: _Head) -> int:
    """The kernel copies the rest of the file in a thread (it releases the GIL) while this thread
    counts the sections; a problem stops the copy and raises (the caller then drops the output)."""
    stop = threading.Event()
    copied: list[int | BaseException] = []

    def copy() -> None:
        try:
            copied.append(_kernel_copy(src_fd, dst_fd, head.head_end, stop))
        except BaseException as e:  # noqa: BLE001 (handed to the main thread)
            copied.append(e)

    thread = threading.Thread(target=copy, name="arpa-copy", daemon=True)
    thread.start()
    done = False
    try:
        _count_sections(src_fd, head)
        done = True
    finally:  # also on Ctrl-C while joining: the copy must end before the caller drops the output
        if not done:
            stop.set()
        thread.join()
    if isinstance(copied[0], BaseException):
        raise copied[0]
    expected = os.fstat(src_fd).st_size - head.head_end
    if copied[0] != expected:  # a copy that ended early, or an input that changed meanwhile
        raise ArpaError(None, f"copied {copied[0]} bytes of the {expected} after the 1-grams: the input changed "
                              "while it was copied, or the file system cut the copy short")
    return copied[0]


def _drain(rd: Reader, spool: BinaryIO, head: _Head) -> int:
    """Count the sections of a gzip or pipe input that is not copied anywhere; returns its
    (uncompressed) size."""
    counter = _SectionCounter(head.header.counts, head.sections_line_no)
    skip = head.sections_start - head.head_end
    spool.seek(head.head_end)
    n1 = _copy_stream(spool, None, counter, skip)
    n2 = _copy_stream(rd.raw, None, counter, max(0, skip - n1))
    counter.finish()
    return head.head_end + n1 + n2


def _copy_stream(src: BinaryIO, out: BinaryIO | None, counter: _SectionCounter, skip: int) -> int:
    """Copy ``src`` to its end into ``out`` (None: nowhere), feeding all but the first ``skip``
    bytes to ``counter``; returns the byte count."""
    total = 0
    try:
        while data := src.read(1 << 20):
            if out is not None:
                out.write(data)
            if total + len(data) > skip:
                counter.feed(data[max(0, skip - total):] if total < skip else data)
            total += len(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ArpaError(None, f"cannot decompress: {e}") from e
    return total


def _fix_result(src: Path, dst: Path, head: _Head, edits: list, written: int, seconds: float) -> FixResult:
    n = head.unigrams
    if edits:
        message = (f"added </s> after <s> (line {head.bos_line_no}) and raised ngram 1= from {n} to {n + 1}: "
                   f"wrote {dst}. This only makes the file load: lmplz leaves </s> out when the corpus "
                   f"is one line, so rebuild from one sentence per line, each ending with a newline")
    else:
        message = f"{src} already has </s> (line {head.eos_line_no}): {dst} is an unchanged copy"
    return FixResult(str(src), str(dst), bool(edits), n, n + bool(edits), written, seconds, message)


