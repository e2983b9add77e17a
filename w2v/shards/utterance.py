"""What every corpus reader yields: one `Utterance` per input row, usable or with its reason.

The rules every layout follows, so that inputs = written + skipped holds whatever the layout:

- A row that cannot be used before any audio is touched (not UTF-8, no audio, an empty transcript,
  a span that makes no sense) is still yielded, with `problem` (and `detail`): it becomes a line of
  `skipped.jsonl`, never a silent loss.
- Audio is a file (`Path`), bytes held in the corpus file itself (`bytes`: a parquet or Arrow
  column), a range of a file (`FileRange`: a member of a tar) or a command that writes it to stdout
  (`Command`: Kaldi's `cmd |`, Lhotse's command sources).
- A span (`Span`) cuts a segment out of its recording, in seconds, or in samples at the
  recording's own rate where the layout counts samples (SpeechBrain). Both ends are always given:
  a start without an end is the reader's to refuse or to resolve by a rule the layout states.
- Keys are unique and safe as tar member names (`Keys`).
- Source columns are kept as metadata, except those whose names the shard format uses for
  itself (`RESERVED`): those are kept as `source_NAME`.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Keys the shard format writes into each sample's JSON itself (w2v.shards.sharding.prepare).
RESERVED = ("text", "duration", "num_samples", "sample_rate", "source", "orig_sample_rate", "orig_channels",
            "segment", "channel")
# A command that writes audio gets this long (seconds) before it counts as failed.
COMMAND_TIMEOUT = 600.0
_SHELL = re.compile(r"[|&;<>()$`*?\[\]#~{}]")  # what only a shell interprets (quotes shlex handles)


class CorpusError(Exception):
    """The source is not a layout we can read (a structural problem: exit code 2, no work done)."""


@dataclass(frozen=True)
class Command:
    """Audio that a command writes to stdout. Run as an argument list without a shell when it is
    plain words; through `bash -c` when it needs a shell (pipes, redirections, variables)."""

    text: str
    cwd: str | None = None  # where it runs (Kaldi: the recipe's folder)

    @property
    def argv(self) -> list[str]:
        if _SHELL.search(self.text) is None:
            try:
                words = shlex.split(self.text)
            except ValueError:
                words = []
            if words and "=" not in words[0]:  # `LC_ALL=C sox …` sets a variable: a shell's job
                return words
        return ["bash", "-c", self.text]

    def __str__(self) -> str:
        return f"{self.text} |"


@dataclass(frozen=True)
class FileRange:
    """`size` bytes at `offset` of a file: a member of a tar, read when it is needed."""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.size)


AudioRef = Path | bytes | FileRange | Command


@dataclass(frozen=True)
class Span:
    """A segment of a recording: [start, end) in seconds, or in samples at the recording's rate."""

    start: float
    end: float
    unit: str = "seconds"  # or "samples"

    def frames(self, rate: int, total: int) -> tuple[int, int]:
        """The segment as frame indices at `rate` (the recording's own) of a recording of `total`
        frames; an end of infinity (Kaldi's -1) is the recording's end."""
        if math.isinf(self.end):
            last = total
        else:
            last = int(self.end) if self.unit == "samples" else round(self.end * rate)
        return (int(self.start) if self.unit == "samples" else round(self.start * rate)), last

    def seconds(self, rate: int | None = None) -> tuple[float, float]:
        if self.unit == "seconds":
            return self.start, self.end
        return self.start / rate, self.end / rate

    def __str__(self) -> str:
        if self.unit == "samples":
            return f"samples {int(self.start)}-{int(self.end)}"
        return f"{self.start:.3f}-{self.end:.3f} s"

    def as_meta(self) -> dict:
        return {"start": self.start, "end": self.end, **({"unit": self.unit} if self.unit != "seconds" else {})}


def checked_span(start: float, end: float, unit: str = "seconds") -> tuple[Span | None, str | None]:
    """(span, None), or (None, why it is not one): both ends finite, 0 <= start < end."""
    if not (math.isfinite(start) and math.isfinite(end)):
        return None, f"start {start}, end {end}: not finite"
    if start < 0 or end <= start:
        return None, f"start {start:g}, end {end:g}: not 0 <= start < end"
    return Span(start, end, unit), None


@dataclass
class Utterance:
    key: str  # unique, deterministic, safe as a tar member prefix (no dots or slashes)
    audio: AudioRef | None  # where the audio is
    text: str | None  # the transcript exactly as the source wrote it
    source: str  # where it came from, relative to the corpus root (or "file:line")
    meta: dict = field(default_factory=dict)  # speaker, locale, ... from the source
    problem: str | None = None  # a skip reason known before decoding
    span: Span | None = None  # a segment of the recording
    channel: int | None = None  # one channel of a multi-channel recording (else channels are averaged)
    detail: str = ""  # what the problem is, for skipped.jsonl


def safe_key(name: str) -> str:
    """A tar-member-safe key: WebDataset splits member names at the first dot."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


class Keys:
    """Unique keys in input order: a name seen again gets `_1`, `_2`, ... (deterministically)."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def __call__(self, name: str) -> str:
        key = candidate = safe_key(name)
        while candidate in self.seen:  # `a, a, a_1` → a, a_1, a_1_1: a given name never collides
            self.seen[key] += 1
            candidate = f"{key}_{self.seen[key]}"
        self.seen[candidate] = 0
        return candidate


def source_meta(row: dict, used: tuple[str, ...] = ()) -> dict:
    """A row's other columns as metadata: empty values left out, the names the shard format uses
    itself kept as `source_NAME` (Common Voice's `segment` column is a benchmark tag, not a span)."""
    meta = {}
    for name, value in row.items():
        if name in used or value in ("", None):
            continue
        meta[f"source_{name}" if name in RESERVED else name] = value
    return meta


def text_problem(text: str | None) -> str | None:
    return "empty_text" if text is None or not str(text).strip() else None


def decoded_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text or None when the bytes are not UTF-8), streamed, line endings stripped."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                yield number, raw.decode("utf-8").lstrip("\ufeff") if number == 1 else raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None


class Corpus:
    """A readable corpus: `format`, `root`, `count()` (the number of inputs, exactly what
    `utterances()` yields, found cheaply) and `utterances()`."""

    format = "?"

    def __init__(self, root: Path):
        self.root = root

    def count(self) -> int:
        return sum(1 for _ in self.utterances())

    def utterances(self) -> Iterator[Utterance]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"format": self.format, "path": str(self.root.resolve())}
