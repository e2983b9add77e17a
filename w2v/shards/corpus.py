"""Readers for the corpus layouts users have: Common Voice, LibriSpeech and plain manifests.

Each reader checks the structure up front (raising `CorpusError` before any audio work) and then
yields one `Utterance` per input row. A row that is unusable before any audio is touched (a line
that is not valid UTF-8, an empty transcript, a row without an audio path) is still yielded, with
`problem` set, so the sharder reports it as a skip instead of losing it.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("auto", "commonvoice", "librispeech", "manifest")
AUDIO_COLUMNS = ("audio", "path", "audio_filepath", "file")
TEXT_COLUMNS = ("text", "sentence", "transcript")
KEY_COLUMNS = ("id", "key", "utt_id")
# A segment of a longer recording: NeMo's offset + duration (seconds), or start + end. `duration`
# alone is not a segment: NeMo manifests give every whole file its duration too.
SEGMENT_COLUMNS = ("offset", "duration", "start", "end")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


class CorpusError(Exception):
    """The source is not a layout we can read (a structural problem: exit code 2, no work done)."""


@dataclass
class Utterance:
    key: str  # unique, deterministic, safe as a tar member prefix (no dots or slashes)
    audio: Path | None  # the audio file to decode
    text: str | None  # the transcript exactly as the source wrote it
    source: str  # where it came from, relative to the corpus root (or "file:line")
    meta: dict = field(default_factory=dict)  # speaker, locale, ... from the source
    problem: str | None = None  # a skip reason known before decoding
    span: tuple[float, float | None] | None = None  # (start, end) seconds of a segment; end None: to the end


def safe_key(name: str) -> str:
    """A tar-member-safe key: WebDataset splits member names at the first dot."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text or None when the bytes are not UTF-8), streamed, line endings stripped."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                yield number, raw.decode("utf-8").lstrip("\ufeff") if number == 1 else raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None


def _text_problem(text: str | None) -> str | None:
    if text is None:
        return "empty_text"
    if not text.strip():
        return "empty_text"
    return None


def _segment(row: dict) -> tuple[tuple[float, float | None] | None, str | None]:
    """(span, problem) of a manifest row: None when it is a whole recording."""
    def number(key: str) -> float | None:
        value = row.get(key)
        return None if value in (None, "") else float(value)

    try:
        if number("offset") is not None:
            start, length = number("offset"), number("duration")
            end = None if length is None else start + length
        elif number("start") is not None or number("end") is not None:
            start, end = number("start") or 0.0, number("end")
        else:
            return None, None
    except (TypeError, ValueError):
        return None, "bad_segment"
    if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
        return None, "bad_segment"
    if start < 0 or (end is not None and end <= start):
        return (start, end), "bad_segment"
    return (start, end), None


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    return next((c for c in wanted if c in columns), None)


class Corpus:
    """A readable corpus: `format`, `root`, `count()` (inputs, cheap) and `utterances()`."""

    format = "?"

    def __init__(self, root: Path):
        self.root = root

    def count(self) -> int:
        raise NotImplementedError

    def utterances(self) -> Iterator[Utterance]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"format": self.format, "path": str(self.root.resolve())}


def _count_data_lines(path: Path, header: bool) -> int:
    """Counts non-empty lines, streaming, without decoding."""
    count = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                count += 1
    return count - 1 if header and count else count


class TableCorpus(Corpus):
    """Rows of a TSV/CSV/JSONL file with an audio column and a text column."""

    def __init__(self, table: Path, audio_root: Path, audio_col: str, text_col: str, kind: str,
                 columns: list[str]):
        super().__init__(table.parent)
        self.table, self.audio_root, self.kind = table, audio_root, kind
        self.audio_col, self.text_col, self.columns = audio_col, text_col, columns

    def describe(self) -> dict:
        return {**super().describe(), "table": str(self.table.resolve())}

    def count(self) -> int:
        if self.kind == "json":
            return len(_json_rows(self.table))
        return _count_data_lines(self.table, header=self.kind != "jsonl")

    def _rows(self) -> Iterator[tuple[int, dict | None, str | None]]:
        """(line, row dict or None, problem); for a JSON list, its item number in place of the line."""
        if self.kind == "json":
            for number, row in enumerate(_json_rows(self.table), start=1):
                if isinstance(row, dict):
                    yield number, row, None
                else:
                    yield number, None, "bad_manifest_line"
            return
        lines = _decoded_lines(self.table)
        if self.kind != "jsonl":
            next(lines, None)  # header, already read by the constructor
        for number, line in lines:
            if line is not None and not line.strip():
                continue
            if line is None:
                yield number, None, "text_decode_error"
                continue
            if self.kind == "jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    yield number, None, "bad_manifest_line"
                    continue
                if not isinstance(row, dict):
                    yield number, None, "bad_manifest_line"
                    continue
            else:
                delimiter = "\t" if self.kind == "tsv" else ","
                quoting = csv.QUOTE_NONE if self.kind == "tsv" else csv.QUOTE_MINIMAL
                values = next(csv.reader([line], delimiter=delimiter, quoting=quoting))
                row = dict(zip(self.columns, values, strict=False))
            yield number, row, None

    def utterances(self) -> Iterator[Utterance]:
        seen: dict[str, int] = {}
        for number, row, problem in self._rows():
            source = f"{self.table.name}:{number}"
            if row is None:
                yield Utterance(safe_key(f"line{number}"), None, None, source, problem=problem)
                continue
            audio = row.get(self.audio_col)
            text = row.get(self.text_col)
            text = None if text is None else str(text)
            if not audio:
                yield Utterance(safe_key(f"line{number}"), None, text, source, problem="no_audio_path")
                continue
            path = Path(str(audio))
            path = path if path.is_absolute() else self.audio_root / path
            span, segment_problem = _segment(row)
            given = next((row[c] for c in KEY_COLUMNS if row.get(c) not in (None, "")), None)
            raw_key = str(given) if given is not None else Path(str(audio)).stem
            if span is not None and given is None:  # stable and unique: the recording plus its start
                raw_key = f"{raw_key}_{round(span[0] * 1000):09d}"
            key = safe_key(raw_key)
            if key in seen:  # duplicate names in different folders: keep both, deterministically
                seen[key] += 1
                key = f"{key}_{seen[key]}"
            else:
                seen[key] = 0
            dropped = (self.audio_col, self.text_col, *(SEGMENT_COLUMNS if span is not None else ()))
            meta = {k: v for k, v in row.items() if k not in dropped and v not in ("", None)}
            try:
                rel = str(path.relative_to(self.root))
            except ValueError:
                rel = str(path)
            if span is not None:
                end = "end" if span[1] is None else f"{span[1]:.3f}"
                rel = f"{rel}@{span[0]:.3f}-{end}"
                meta["segment"] = {"start": span[0], "end": span[1]}
            yield Utterance(key, path, text, rel, meta, segment_problem or _text_problem(text), span)


def _json_rows(path: Path) -> list:
    """The rows of a `.json` manifest that is one JSON list (read whole)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: not JSON ({exc})") from None
    if not isinstance(rows, list):
        raise CorpusError(f"{path}: a .json manifest is a list of rows (or use one JSON object per line)")
    return rows


def _json_kind(path: Path) -> str:
    """A `.json` manifest is a JSON list, or JSON lines under that suffix (as NeMo names them)."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


def _table_header(table: Path, kind: str) -> list[str]:
    if kind == "json":
        rows = _json_rows(table)
        first = next((r for r in rows if isinstance(r, dict)), None)
        return list(first) if first is not None else []
    if kind == "jsonl":
        for _, line in _decoded_lines(table):
            if line is None or not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{table}: first line is not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise CorpusError(f"{table}: JSONL lines must be objects")
            return list(row)
        return []
    first = next(_decoded_lines(table), (1, ""))[1]
    if not first:
        raise CorpusError(f"{table}: empty or undecodable header line")
    delimiter = "\t" if kind == "tsv" else ","
    return next(csv.reader([first], delimiter=delimiter))


def open_manifest(path: Path, audio_column: str | None = None, text_column: str | None = None,
                  audio_names: tuple[str, ...] = AUDIO_COLUMNS, text_required: bool = True) -> TableCorpus:
    """A JSONL, JSON (a list), CSV or TSV manifest; its audio and text columns found by name
    (`audio_names`, TEXT_COLUMNS), or named. No rows at all (an empty file, a header alone) is an
    error, whatever the format. `text_required=False`: audio to transcribe, texts None."""
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise CorpusError(f"{path}: a manifest must be one of {', '.join(MANIFEST_SUFFIXES)}")
    kind = {".jsonl": "jsonl", ".json": _json_kind(path)}.get(suffix, suffix[1:])
    columns = _table_header(path, kind)
    corpus = TableCorpus(path, path.parent, "", "", kind, columns)
    if not columns or corpus.count() == 0:
        raise CorpusError(f"{path}: no rows")
    corpus.audio_col = _column(path, columns, audio_column, audio_names, "audio")
    if text_required or text_column is not None or _pick(columns, TEXT_COLUMNS):
        corpus.text_col = _column(path, columns, text_column, TEXT_COLUMNS, "text")
    else:
        corpus.text_col = None  # every text None
    corpus.format = "manifest"
    return corpus


def _column(path: Path, columns: list[str], given: str | None, names: tuple[str, ...], what: str) -> str:
    if given is not None:
        if given not in columns:
            raise CorpusError(f"{path}: no column {given!r} (--{what}-column); columns: {', '.join(columns)}")
        return given
    found = _pick(columns, names)
    if found is None:
        raise CorpusError(f"{path}: no {what} column (one of {', '.join(names)}; or name it with "
                          f"--{what}-column); columns: {', '.join(columns)}")
    return found


def open_commonvoice(src: Path, split: str | None) -> TableCorpus:
    table = src if src.is_file() else src / f"{split or 'train'}.tsv"
    if not table.is_file():
        raise CorpusError(f"{table}: no such Common Voice split (use --split, e.g. train, dev, test, validated)")
    clips = table.parent / "clips"
    if not clips.is_dir():
        raise CorpusError(f"{table.parent}: Common Voice layout needs a clips/ folder beside the TSV")
    columns = _table_header(table, "tsv")
    for needed in ("path", "sentence"):
        if needed not in columns:
            raise CorpusError(f"{table}: Common Voice TSV needs a {needed!r} column; columns: {columns}")
    corpus = TableCorpus(table, clips, "path", "sentence", "tsv", columns)
    corpus.format = "commonvoice"
    return corpus


class LibriSpeechCorpus(Corpus):
    """`SPK/CHAP/SPK-CHAP.trans.txt` lines `UTT TEXT`, audio in `SPK/CHAP/UTT.flac`."""

    format = "librispeech"

    def __init__(self, root: Path):
        super().__init__(root)
        self.transcripts = sorted(root.glob("*/*/*.trans.txt"))
        if not self.transcripts:
            raise CorpusError(f"{root}: no SPK/CHAP/*.trans.txt files (is this a LibriSpeech split folder?)")

    def count(self) -> int:
        total = 0
        for trans in self.transcripts:
            listed = {line.split(maxsplit=1)[0] for _, line in _decoded_lines(trans) if line and line.strip()}
            bad = sum(1 for _, line in _decoded_lines(trans) if line is None)
            unlisted = [p for p in trans.parent.glob("*.flac") if p.stem not in listed]
            total += len(listed) + bad + len(unlisted)
        return total

    def utterances(self) -> Iterator[Utterance]:
        for trans in self.transcripts:
            speaker, chapter = trans.parent.parent.name, trans.parent.name
            listed = set()
            for number, line in _decoded_lines(trans):
                source = f"{trans.relative_to(self.root)}:{number}"
                if line is None:
                    yield Utterance(safe_key(f"{trans.stem}_line{number}"), None, None, source,
                                    problem="text_decode_error")
                    continue
                if not line.strip():
                    continue
                parts = line.split(maxsplit=1)
                utt = parts[0]
                text = parts[1] if len(parts) > 1 else ""
                listed.add(utt)
                audio = trans.parent / f"{utt}.flac"
                meta = {"speaker": speaker, "chapter": chapter}
                yield Utterance(safe_key(utt), audio, text, str(audio.relative_to(self.root)), meta,
                                _text_problem(text))
            for audio in sorted(trans.parent.glob("*.flac")):
                if audio.stem not in listed:  # audio without a transcript line: reported, not lost
                    yield Utterance(safe_key(audio.stem), audio, None, str(audio.relative_to(self.root)),
                                    {"speaker": speaker, "chapter": chapter}, problem="no_transcript")


def detect_format(src: Path, split: str | None = None) -> str:
    if src.is_file():
        if src.suffix.lower() == ".tsv" and (src.parent / "clips").is_dir():
            columns = _table_header(src, "tsv")
            if "path" in columns and "sentence" in columns:
                return "commonvoice"
        if src.suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        raise CorpusError(f"{src}: not a Common Voice TSV or a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    if src.is_dir():
        if (src / "clips").is_dir() and (split or any(src.glob("*.tsv"))):
            return "commonvoice"
        if any(src.glob("*/*/*.trans.txt")):
            return "librispeech"
        raise CorpusError(f"{src}: no known layout (Common Voice: clips/ + TSVs; LibriSpeech: "
                          "SPK/CHAP/*.trans.txt; or pass a manifest file)")
    raise CorpusError(f"{src}: no such file or folder")


def open_corpus(src: str | Path, fmt: str = "auto", split: str | None = None, audio_column: str | None = None,
                text_column: str | None = None) -> Corpus:
    """Detect (for `auto`) and open a corpus; raises CorpusError on structural problems. The column
    names apply to a manifest."""
    src = Path(src)
    if fmt not in FORMATS:
        raise CorpusError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if not src.exists():
        raise CorpusError(f"{src}: no such file or folder")
    fmt = detect_format(src, split) if fmt == "auto" else fmt
    if fmt == "commonvoice":
        return open_commonvoice(src, split)
    if fmt == "librispeech":
        if not src.is_dir():
            raise CorpusError(f"{src}: LibriSpeech source must be a split folder such as test-clean")
        return LibriSpeechCorpus(src)
    if src.is_dir():
        raise CorpusError(f"{src}: a manifest source must be a file")
    return open_manifest(src, audio_column, text_column)
