"""ARPA n-gram files for KenLM: add a missing ``</s>`` quickly, and check what KenLM requires.

Why ``</s>`` goes missing: lmplz appends ``</s>`` only when it reads a newline, so a corpus written
as one line (``" ".join(texts)``) gives an ARPA without it, and ``kenlm.Model`` refuses such a
file. The real fix is to rebuild from one sentence per line, each ending with a newline. The
wav2vec2 notes patch the file instead: copy the ``<s>`` 1-gram line as ``</s>`` and raise
``ngram 1=`` by one. :func:`fix_arpa` does exactly that patch (byte for byte the notes' output on
normal files), but

* streams: only the ``\\data\\`` header and the 1-gram section are parsed; everything after them
  (all higher orders, >99% of the bytes) is copied by the kernel for plain files;
* raises the count as an integer (the notes' ``str.replace`` turns ``ngram 1=1`` into ``ngram 2=2``);
* is idempotent: a file that already has ``</s>`` comes out unchanged;
* is atomic: the output appears under its name only when complete.

Fixing checks the structure of what it parses (header, 1-grams, the next section header) and that
the file ends with ``\\end\\`` (which catches truncation); it does not re-validate the entries it
copies. :func:`check_arpa` (``tools/fix_arpa.py --check``) does,
in one streaming pass: entry counts per section, TAB-separated fields, log probs <= 0, no backoff
on the highest order, every word of a higher-order entry present as a 1-gram, ``\\end\\``.

The check's inner loop is compiled with numba (a project dependency, imported only by the check)
because per-line Python tops out near 50 MB/s; it runs in threads (it releases the GIL) above the
1-grams. The compiled loop only accepts lines it can prove fine and stops at anything else, so a
pure-Python path decides about those lines and words every error message; it also runs the whole
check without numba (``jit=False``). Words are compared by 64-bit FNV-1a hashes in the compiled
path, so a missing 1-gram whose hash collides with a present one (odds ~ vocabulary / 2**64) would pass.

API: ``fix_arpa(src, dst) -> FixResult``, ``check_arpa(path, jit=None, threads=None) -> CheckReport``,
``ArpaError(line_no, message)``; ``tools/fix_arpa.py`` is the command line.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import stat
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BOS = b"<s>"
EOS = b"</s>"
_UNK_WORDS = (b"<unk>", b"<UNK>")  # KenLM accepts these in n-grams even when no 1-gram lists them
_CHUNK = 8 << 20  # read size of the check; also the longest line we accept
_FIX_CHUNK = 1 << 20  # read size of the fixer, which reads only the header and the 1-grams
_SPOOL_IN_MEMORY = 8 << 20  # the fixer keeps the header + 1-grams in memory up to this size, then on disk
_KENLM_BINARY_MAGIC = b"mmap lm "
_COUNT_LINE = re.compile(rb"ngram ([0-9]+)=([0-9]+)[ \t]*\n?")

_Contains = Callable[[bytes], bool]


class ArpaError(Exception):
    """The file is not an ARPA that KenLM can load; ``line_no`` is 1-based (None: not tied to a line)."""

    def __init__(self, line_no: int | None, message: str):
        self.line_no = line_no
        self.message = message
        super().__init__(f"line {line_no}: {message}" if line_no is not None else message)


@dataclass
class FixResult:
    src: str
    dst: str
    changed: bool  # False: the input already had </s> and dst is an identical copy
    unigrams_before: int
    unigrams_after: int
    bytes_written: int  # uncompressed bytes
    seconds: float
    message: str


@dataclass
class CheckReport:
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


# ---------------------------------------------------------------------------------------------
# Reading: big chunks, whole lines, absolute offsets and line numbers.


class _Reader:
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
def _open_input(path: Path) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open for reading: gzip by suffix; also yields the fd when it is a plain regular file."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            yield f, None
        return
    with open(path, "rb", buffering=0) as f:
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
        yield f, (f.fileno() if regular else None)


def _show(data: bytes, limit: int = 60) -> str:
    text = data.rstrip(b"\n").decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------------------------------------
# Structure shared by fixing and checking: the header, section headers, one entry.


@dataclass
class _Header:
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
    return f"missing \\data\\: expected it as the first non-empty line, got {_show(line)}"


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_header(rd: _Reader) -> _Header:
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
        m = _COUNT_LINE.fullmatch(line)
        if m is None:
            raise ArpaError(rd.line_no, f"expected 'ngram N=count' or a blank line in the header, got {_show(line)}")
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
    return _Header(counts, *n1)


def _expect_line(rd: _Reader, wanted: bytes, what: str) -> None:
    """Skip blank lines (KenLM does), then require ``wanted`` (without its newline)."""
    line = rd.readline()
    while line and not line.strip():
        line = rd.readline()
    if not line:
        raise ArpaError(rd.line_no + 1, f"truncated: file ends where {what} should be")
    if line.rstrip(b"\n") != wanted:
        raise ArpaError(rd.line_no, f"expected {wanted.decode()} ({what}), got {_show(line)}")


def _expect_section(rd: _Reader, order: int) -> None:
    _expect_line(rd, b"\\%d-grams:" % order, f"the start of the {order}-grams")


def _expect_end(rd: _Reader, max_order: int) -> None:
    """``\\end\\`` after the last section, then nothing but blank lines."""
    line = rd.readline()
    while line and not line.strip():
        line = rd.readline()
    if not line:
        raise ArpaError(rd.line_no + 1, f"missing \\end\\: the file stops after the {max_order}-grams")
    if line.rstrip(b"\n") != b"\\end\\":
        raise ArpaError(rd.line_no, f"expected \\end\\ after the {max_order}-grams, got {_show(line)}")
    line = rd.readline()
    while line:
        if line.strip():
            raise ArpaError(rd.line_no, f"text after \\end\\: {_show(line)}")
        line = rd.readline()


def _parse_float(text: bytes) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _entry_problem(line: bytes, order: int, highest: bool, contains: _Contains | None) -> str | None:
    """What KenLM would reject in one entry line, or None. The authority for every error message."""
    body = line[:-1] if line.endswith(b"\n") else line
    if body.endswith(b"\r"):
        return "Windows line ending (CRLF): KenLM needs \\n only"
    fields = body.split(b"\t")
    if len(fields) not in (2, 3):
        return (f"expected 'log10prob<TAB>{order} word(s)[<TAB>backoff]' ({len(fields) - 1} TABs), "
                f"got {_show(body)}")
    if fields[0] != fields[0].strip() or fields[1].endswith(b" "):
        return f"a space before a TAB or the newline: {_show(body)}"  # KenLM stops at it
    prob = _parse_float(fields[0])
    if prob is None:
        return f"log probability {_show(fields[0])} is not a number"
    if prob > 0:
        return f"positive log probability {fields[0].decode(errors='replace')} (log10 probs must be <= 0)"
    words = _words(fields[1])
    if len(words) != order:
        return f"expected {order} word(s) in a {order}-gram entry, got {len(words)}: {_show(fields[1])}"
    if len(fields) == 3:
        backoff = _parse_float(fields[2])
        if backoff is None:
            return f"backoff {_show(fields[2])} is not a number"
        if highest and backoff != 0:
            return f"backoff {fields[2].decode(errors='replace')} on a highest-order ({order}-gram) entry"
    if order > 1 and contains is not None:
        for w in words:
            if w not in _UNK_WORDS and not contains(w):
                return f"word {_show(w)} is not among the 1-grams (KenLM needs every word as a 1-gram)"
    return None


def _words(field: bytes) -> list[bytes]:
    """The words of an entry as KenLM reads them: runs of bytes between spaces (or carriage returns)."""
    return [w for w in field.replace(b"\r", b" ").split(b" ") if w]


def _check_lines(block: bytes, first_line_no: int, order: int, highest: bool,
                 contains: _Contains | None) -> None:
    """Per-line check of a block of whole lines; raises at the first bad one."""
    for i, line in enumerate(_lines(block)):
        problem = _entry_problem(line, order, highest, contains)
        if problem:
            raise ArpaError(first_line_no + i, problem)


def _lines(block: bytes) -> list[bytes]:
    """The lines of a block of whole lines, without their newlines (not splitlines: a lone \\r is no break)."""
    return block.split(b"\n")[:-1]


def _section_stop(block: bytes) -> int:
    """Index of the first line that ends a section (blank or starting with a backslash), or -1."""
    if block[:1] in (b"\n", b"\\"):
        return 0
    stops = [i + 1 for i in (block.find(b"\n\n"), block.find(b"\n\\")) if i >= 0]
    return min(stops) if stops else -1


def _count_mismatch(rd: _Reader, order: int, found: int, wanted: int) -> ArpaError:
    return ArpaError(rd.line_no + 1, f"the {order}-grams section has {found} entries but the header says "
                                     f"ngram {order}={wanted}")


def _truncated(rd: _Reader, order: int, found: int, wanted: int, last: bool) -> ArpaError:
    """The error for a file that ends among the entries of a section (no blank line after them)."""
    tail = rd.readline()  # a last line without its newline, if any
    if tail:
        return ArpaError(rd.line_no, f"truncated: the file ends in the middle of a line in the {order}-grams "
                                     f"({found} of {wanted} entries complete)")
    if found < wanted:
        return ArpaError(rd.line_no + 1, f"truncated: the file ends in the {order}-grams "
                                         f"({found} of {wanted} entries)")
    if found > wanted:
        return _count_mismatch(rd, order, found, wanted)
    if last:
        return ArpaError(rd.line_no + 1, f"missing \\end\\: the file stops after the {order}-grams")
    return ArpaError(rd.line_no + 1, f"truncated: the file stops after the {order}-grams")


# ---------------------------------------------------------------------------------------------
# Fixing.

# Everything but TAB, newline and space, deleted by bytes.translate to see a block's field layout.
_NOT_LAYOUT = bytes(c for c in range(256) if c not in b"\t\n ")


def _plain_unigram_lines(block: bytes) -> int | None:
    """The number of lines when each line of ``block`` passes bytes-level 1-gram checks, else None.

    A handful of C-speed passes instead of a Python loop: one or two TABs per line, no spaces (a
    1-gram is one word), and each log prob starts with '-' or is an exact 0 (lmplz writes 0 for
    <s>). A blank line or a section header fails too, so a block that passes lies inside the
    section. None means: look closer (_section_stop, _check_lines).
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
    header: _Header
    unigrams: int
    bos_line: bytes | None
    bos_end: int  # file offset right after the <s> line
    bos_line_no: int
    eos_line_no: int  # 0: no </s>
    head_end: int  # file offset of the end of the 1-gram entries


def _scan_head(rd: _Reader) -> _Head:
    """Read and check the header and the 1-grams; find the <s> and </s> lines."""
    header = _read_header(rd)
    _expect_section(rd, 1)
    wanted = header.counts[0]  # and there are higher orders: _read_header saw to it
    found, bos_line, bos_end, bos_line_no, eos_line_no = 0, None, 0, 0, 0
    while True:
        stop = rd.whole_lines()
        if not stop:
            raise _truncated(rd, 1, found, wanted, last=False)
        block = bytes(memoryview(rd.buf)[rd.start:stop])
        lines, cut = _plain_unigram_lines(block), -1
        if lines is None:
            cut = _section_stop(block)
            if cut >= 0:
                block = block[:cut]
                lines = _plain_unigram_lines(block)
            if lines is None:  # raises at a bad line; unusual but valid lines (a log prob 0.0) pass
                _check_lines(block, rd.line_no + 1, 1, False, None)
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
        raise _count_mismatch(rd, 1, found, wanted)
    head_end = rd.offset
    _expect_section(rd, 2)
    return _Head(header, found, bos_line, bos_end, bos_line_no, eos_line_no, head_end)


def _require_end(tail: bytes, size: int) -> None:
    """The fixer's cheap check of what it does not parse: the file must end with an \\end\\ line."""
    body = tail.rstrip()
    if body.endswith(b"\\end\\") and body[-6:-5] in (b"\n", b""):
        return
    raise ArpaError(None, f"the file does not end with \\end\\ (truncated at {size} bytes?); "
                          f"`tools/fix_arpa.py --check` names the line")


def _file_tail(fd: int, n: int = 4096) -> tuple[bytes, int]:
    size = os.fstat(fd).st_size
    return os.pread(fd, n, max(0, size - n)), size


def _edits(head: _Head) -> list[tuple[int, int, bytes]]:
    """(start, end, replacement) byte edits that add </s>, as the notes' loop does; [] if not needed."""
    if head.eos_line_no:
        return []
    if head.bos_line is None:
        raise ArpaError(head.header.n1_line_no, "neither <s> nor </s> among the 1-grams: nothing to copy "
                                                "</s> from; rebuild the LM (one sentence per line)")
    n1 = head.header.n1_line
    m = _COUNT_LINE.fullmatch(n1)
    assert m is not None  # _read_header matched it
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


def _kernel_copy(src_fd: int, dst_fd: int, offset: int) -> int:
    """Copy src_fd[offset:] to dst_fd's position inside the kernel; returns bytes copied.

    copy_file_range, else sendfile, else read/write: the first two never bring the data into
    Python and run at page-cache speed.
    """
    total = 0
    try:
        while n := os.copy_file_range(src_fd, dst_fd, 1 << 30, offset + total):
            total += n
        return total
    except OSError as e:
        if total or e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
            raise
    try:
        while n := os.sendfile(dst_fd, src_fd, offset + total, 1 << 30):
            total += n
        return total
    except OSError as e:
        if total or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while data := os.pread(src_fd, 1 << 20, offset + total):
        view = memoryview(data)
        while view:
            view = view[os.write(dst_fd, view):]
        total += len(data)
    return total


@contextmanager
def _atomic_output(dst: Path) -> Iterator[BinaryIO]:
    """A file under a temporary name beside ``dst``, renamed to ``dst`` only when all went well."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with open(fd, "wb", buffering=0) as out:
            yield out
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        os.replace(tmp, dst)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def fix_arpa(src: str | os.PathLike, dst: str | os.PathLike) -> FixResult:
    """Write ``src`` to ``dst`` with ``</s>`` added (as the notes' loop does) when it is missing.

    ``.gz`` on either name means gzip. ``dst`` may be ``src``. Checks the header, the 1-grams, the
    next section header and that the file ends with ``\\end\\``, not the entries in between
    (``check_arpa`` does). Raises ArpaError on malformed input; ``dst`` is then left untouched.
    """
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    with _open_input(src) as (raw, src_fd), _head_copy(src_fd) as spool:
        rd = _Reader(raw, tee=spool, chunk=_FIX_CHUNK)
        head = _scan_head(rd)
        if src_fd is not None:
            _require_end(*_file_tail(src_fd))  # before any output exists
        edits = _edits(head)
        if not edits and _same_file(src, dst) and src.suffix == dst.suffix:
            written = os.path.getsize(src)
        else:
            written = _write_fixed(rd, raw if spool is None else spool, head, edits, src_fd, dst)
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


def _write_fixed(rd: _Reader, head_source: BinaryIO, head: _Head, edits: list[tuple[int, int, bytes]],
                 src_fd: int | None, dst: Path) -> int:
    """Edited head, then the rest: by the kernel when both ends are plain files. ``head_source`` is
    the input itself when it is a plain file, else the spool of what the head scan read."""
    with _atomic_output(dst) as out_raw:
        out: BinaryIO = out_raw
        if dst.suffix == ".gz":
            out = gzip.GzipFile(filename=dst.stem, mode="wb", fileobj=out_raw, compresslevel=6, mtime=0)
        try:
            _write_head(head_source, edits, head.head_end, out)
            written = head.head_end + sum(len(r) - (e - s) for s, e, r in edits)
            if src_fd is not None and out is out_raw:
                written += _kernel_copy(src_fd, out_raw.fileno(), head.head_end)
            elif src_fd is not None:
                rd.raw.seek(head.head_end)
                written += _copy_stream(rd.raw, out)[0]
            else:  # gzip or a pipe: what the head scan read ahead is in the spool
                head_source.seek(head.head_end)
                n1, tail1 = _copy_stream(head_source, out)
                n2, tail2 = _copy_stream(rd.raw, out)
                written += n1 + n2
                _require_end(tail1 + tail2, written)
        finally:
            if out is not out_raw:
                out.close()  # writes the gzip trailer; leaves out_raw open
    return written


def _copy_stream(src: BinaryIO, out: BinaryIO) -> tuple[int, bytes]:
    """Buffered copy to the end of ``src``; returns the byte count and the last 4 KiB."""
    total, tail = 0, b""
    try:
        while data := src.read(1 << 20):
            out.write(data)
            total += len(data)
            tail = (tail + data[-4096:])[-4096:]
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ArpaError(None, f"cannot decompress: {e}") from e
    return total, tail


def _fix_result(src: Path, dst: Path, head: _Head, edits: list, written: int, seconds: float) -> FixResult:
    n = head.unigrams
    if edits:
        message = (f"added </s> after <s> (line {head.bos_line_no}) and raised ngram 1= from {n} to {n + 1}: "
                   f"wrote {dst}. This only makes the file load: lmplz leaves </s> out when the corpus "
                   f"is one line, so rebuild from one sentence per line, each ending with a newline")
    else:
        message = f"{src} already has </s> (line {head.eos_line_no}): {dst} is an unchanged copy"
    return FixResult(str(src), str(dst), bool(edits), n, n + bool(edits), written, seconds, message)


# ---------------------------------------------------------------------------------------------
# Checking: one pass over everything. The compiled scanner accepts the lines it can prove fine and
# stops at anything else; _entry_problem then decides about that line and words the error.

# 64-bit FNV-1a, kept as signed int64 (wrapping arithmetic) so the compiled code needs no numpy types.
_FNV_OFFSET = 14695981039346656037 - (1 << 64)
_FNV_PRIME = 1099511628211
# Return codes of _scan_kernel.
_DONE, _SECTION_END, _SUSPECT, _TABLE_FULL = 0, 1, 2, 3
_PARALLEL_MIN = 1 << 20  # buffers smaller than this are scanned in one thread


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
        # Optional backoff: TAB, optional '-', a number (never on the highest order: _entry_problem decides).
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

    def section(self, rd: _Reader, order: int, highest: bool, wanted: int) -> _SectionStats:
        stats = _SectionStats()
        while True:
            stop = rd.whole_lines()
            if not stop:
                raise _truncated(rd, order, stats.entries, wanted, highest)
            if self.kernel is not None:
                code = self._run_kernel(rd, stop, order, highest, stats)
            else:
                code = self._run_python(rd, stop, order, highest, stats)
            if code == _SECTION_END:
                return stats
            if code == _SUSPECT:
                self._one_line(rd, order, highest, stats)

    def _run_kernel(self, rd: _Reader, stop: int, order: int, highest: bool, stats: _SectionStats) -> int:
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

    def _split(self, rd: _Reader, stop: int) -> list[tuple[int, int]]:
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

    def _fill_vocabulary(self, buf, rd: _Reader, stop: int, stats: _SectionStats) -> int:
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

    def _run_python(self, rd: _Reader, stop: int, order: int, highest: bool, stats: _SectionStats) -> int:
        block = bytes(memoryview(rd.buf)[rd.start:stop])
        cut = _section_stop(block)
        if cut >= 0:
            block = block[:cut]
        _check_lines(block, rd.line_no + 1, order, highest, self.vocab.contains)
        for line in _lines(block):
            self._count(line, order, stats)
        lines = block.count(b"\n")
        rd.advance(rd.start + len(block), lines)
        stats.entries += lines
        return _SECTION_END if cut >= 0 else _DONE

    def _one_line(self, rd: _Reader, order: int, highest: bool, stats: _SectionStats) -> None:
        line = rd.readline()
        problem = _entry_problem(line, order, highest, self.vocab.contains)
        if problem:
            raise ArpaError(rd.line_no, problem)
        self._count(line, order, stats)
        stats.entries += 1

    def _count(self, line: bytes, order: int, stats: _SectionStats) -> None:
        words = _words(line.split(b"\t")[1])
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
    with _open_input(path) as (raw, _):
        rd = _Reader(raw)
        header = _read_header(rd)
        threads = threads or min(4, os.cpu_count() or 1)
        scanner = _Scanner(header.counts[0], len(header.counts), jit, threads)
        stats: list[_SectionStats] = []
        try:
            for order, wanted in enumerate(header.counts, start=1):
                _expect_section(rd, order)
                found = scanner.section(rd, order, order == len(header.counts), wanted)
                if found.entries != wanted:
                    raise _count_mismatch(rd, order, found.entries, wanted)
                stats.append(found)
        finally:
            scanner.close()
        _expect_end(rd, len(header.counts))
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
                     "(`python tools/fix_arpa.py IN OUT` patches it in seconds)")
    if report.one_line_corpus:
        notes.append("this is the one-line-corpus signature (no </s>, a single bigram starting with <s>): "
                     "lmplz saw the whole corpus as one sentence. Rebuild it from a text file with one "
                     "sentence per line, each ending with a newline: the patch only makes it load")
    return notes

