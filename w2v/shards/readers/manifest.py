"""Manifests: JSONL (NeMo's `.json` lines too), a JSON list or dict, CSV, TSV; and Common Voice TSVs.

A row names its audio (a column found by name, or `--audio-column`) and its transcript (`--text-
column`); an `id`-like column names the sample (else the audio file's name does). Relative paths
resolve against the manifest's folder (Common Voice: its `clips/`). A segment of a longer
recording is NeMo's `offset` + `duration` or `start` + `end` (or `start` + `duration`), in
seconds: `duration` alone is a whole file's length, as NeMo writes it for every row; a start with
no end is refused (a column: before any work; a row: as `bad_segment`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from w2v.shards.utterance import (
    Corpus,
    CorpusError,
    Keys,
    Span,
    Utterance,
    checked_span,
    decoded_lines,
    source_meta,
    text_problem,
)

AUDIO_COLUMNS = ("audio", "path", "audio_filepath", "file", "file_name", "filename", "wav")
TEXT_COLUMNS = ("text", "sentence", "transcript", "transcription", "normalized_text")
KEY_COLUMNS = ("id", "ID", "key", "utt_id", "utterance_id", "uttid")
STARTS, ENDS = ("offset", "start"), ("end", "duration")
SPAN_COLUMNS = (*STARTS, *ENDS)
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
ASCII_SPACE = " \t\n\r\x0b\x0c"


def _number(row: dict, name: str) -> float | None:
    value = row.get(name)
    return None if value in (None, "") else float(value)


def row_span(row: dict) -> tuple[Span | None, str | None]:
    """(the row's Span, or None for a whole recording; why its span columns make no span, or None)."""
    try:
        start = next((v for v in (_number(row, c) for c in STARTS) if v is not None), None)
        end, length = _number(row, "end"), _number(row, "duration")
    except (TypeError, ValueError) as exc:
        return None, f"span columns: {exc}"
    if start is None:
        return None, "an end without a start" if end is not None else None  # `duration` alone: a whole file
    if end is None and length is None:
        return None, f"a start ({start:g}) without an end or a duration"
    return checked_span(start, end if end is not None else start + length)


def _check_span_columns(path: Path, columns: list[str]) -> None:
    """A start column needs an end column: a half-given span would be a silent guess."""
    starts = [c for c in STARTS if c in columns]
    if starts and not any(c in columns for c in ENDS):
        hint = " (SpeechBrain's start/stop count samples: --format speechbrain)" if "stop" in columns else ""
        raise CorpusError(f"{path}: column {starts[0]!r} without 'end' or 'duration': a segment needs both ends"
                          f"{hint}")


class TableCorpus(Corpus):
    """Rows of a TSV/CSV/JSONL/JSON file with an audio column and a text column."""

    format = "manifest"

    def __init__(self, table: Path, audio_root: Path, audio_col: str, text_col: str | None, kind: str,
                 columns: list[str], spans: bool = True):
        super().__init__(table.parent)
        self.table, self.audio_root, self.kind = table, audio_root, kind
        self.audio_col, self.text_col, self.columns, self.spans = audio_col, text_col, columns, spans

    def describe(self) -> dict:
        return {**super().describe(), "table": str(self.table.resolve())}

    def count(self) -> int:
        if self.kind in ("json", "jsondict"):
            return len(_json_rows(self.table))
        count = 0
        with open(self.table, "rb") as handle:  # non-empty lines, streamed, not decoded
            for raw in handle:
                count += bool(raw.strip())
        return count - 1 if self.kind in ("csv", "tsv") and count else count

    def _rows(self) -> Iterator[tuple[int, dict | None, str | None]]:
        """(line, row dict or None, problem); for a JSON list or dict, its item number in place of the line."""
        if self.kind in ("json", "jsondict"):
            for number, row in enumerate(_json_rows(self.table), start=1):
                yield number, row if isinstance(row, dict) else None, None if isinstance(row, dict) else "bad_manifest_line"
            return
        lines = decoded_lines(self.table)
        if self.kind != "jsonl":
            next(lines, None)  # the header, read by open_manifest
        for number, line in lines:
            if line is None:
                yield number, None, "text_decode_error"
            elif not line.strip(ASCII_SPACE):  # as count() sees blank lines (bytes.strip)
                continue
            elif self.kind == "jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                yield number, row if isinstance(row, dict) else None, None if isinstance(row, dict) else "bad_manifest_line"
            else:
                delimiter = "\t" if self.kind == "tsv" else ","
                quoting = csv.QUOTE_NONE if self.kind == "tsv" else csv.QUOTE_MINIMAL
                values = next(csv.reader([line], delimiter=delimiter, quoting=quoting))
                yield number, dict(zip(self.columns, values, strict=False)), None

    def utterances(self) -> Iterator[Utterance]:
        keys = Keys()
        for number, row, problem in self._rows():
            source = f"{self.table.name}:{number}"
            if row is None:
                yield Utterance(keys(f"line{number}"), None, None, source, problem=problem)
                continue
            yield self._utterance(row, number, source, keys)

    def _utterance(self, row: dict, number: int, source: str, keys: Keys) -> Utterance:
        audio = row.get(self.audio_col)
        text = row.get(self.text_col) if self.text_col else None
        text = None if text is None else str(text)
        given = next((row[c] for c in KEY_COLUMNS if row.get(c) not in (None, "")), None)
        if not audio:
            return Utterance(keys(str(given) if given is not None else f"line{number}"), None, text, source,
                             problem="no_audio_path")
        path = Path(str(audio))
        path = path if path.is_absolute() else self.audio_root / path
        span, bad = row_span(row) if self.spans else (None, None)
        raw_key = str(given) if given is not None else Path(str(audio)).stem
        if span is not None and given is None:
            raw_key = f"{raw_key}_{round(span.start * 1000):09d}"  # the recording and its start: stable, unique
        meta = source_meta(row, (self.audio_col, self.text_col or "", *(SPAN_COLUMNS if span is not None else ())))
        try:
            rel = str(path.relative_to(self.root))
        except ValueError:
            rel = str(path)
        if bad is not None:
            return Utterance(keys(raw_key), path, text, rel, meta, problem="bad_segment", detail=bad)
        if span is not None:
            rel = f"{rel}@{span}"
            meta["segment"] = span.as_meta()
        problem = text_problem(text) if self.text_col else None
        return Utterance(keys(raw_key), path, text, rel, meta, problem, span)


def _json_rows(path: Path) -> list:
    """The rows of a `.json` manifest that is one JSON value: a list of rows, or a dict of rows by
    key (SpeechBrain's layout), read whole."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: not JSON ({exc})") from None
    if isinstance(value, dict):
        if not all(isinstance(v, dict) for v in value.values()):
            raise CorpusError(f"{path}: a JSON object manifest maps each key to a row object")
        return [{"id": key, **row} for key, row in value.items()]
    if not isinstance(value, list):
        raise CorpusError(f"{path}: a .json manifest is a list of rows, a dict of rows by key, or JSON lines")
    return value


def _json_kind(path: Path) -> str:
    """A `.json` manifest: one JSON value (a list, or a dict of rows, pretty-printed or not), or JSON
    lines under that suffix (as NeMo names them)."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):
        return "json"
    first = next((line for _, line in decoded_lines(path) if line and line.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return "jsondict"  # an object over several lines
    if isinstance(row, dict) and row and all(isinstance(v, dict) for v in row.values()):
        return "jsondict"  # one line holding every row by key
    return "jsonl"


def _table_header(table: Path, kind: str) -> list[str]:
    if kind in ("json", "jsondict"):
        first = next((r for r in _json_rows(table) if isinstance(r, dict)), None)
        return list(first) if first is not None else []
    if kind == "jsonl":
        for _, line in decoded_lines(table):
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
    first = next(decoded_lines(table), (1, ""))[1]
    if not first:
        raise CorpusError(f"{table}: empty or undecodable header line")
    return next(csv.reader([first], delimiter="\t" if kind == "tsv" else ","))


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    return next((c for c in wanted if c in columns), None)


def find_column(path: Path, columns: list[str], given: str | None, names: tuple[str, ...], what: str,
                required: bool = True) -> str | None:
    """The column named by `--{what}-column`, else the first of `names` present; when there is
    none, a CorpusError that lists the columns (or None, when it is not `required`)."""
    if given is not None:
        if given not in columns:
            raise CorpusError(f"{path}: no column {given!r} (--{what}-column); columns: {', '.join(columns)}")
        return given
    found = _pick(columns, names)
    if found is None and required:
        raise CorpusError(f"{path}: no {what} column (one of {', '.join(names)}; or name it with "
                          f"--{what}-column); columns: {', '.join(columns)}")
    return found


def manifest_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise CorpusError(f"{path}: a manifest must be one of {', '.join(MANIFEST_SUFFIXES)}")
    return {".jsonl": "jsonl", ".json": _json_kind(path)}.get(suffix, suffix[1:])


def open_manifest(path: Path, audio_column: str | None = None, text_column: str | None = None,
                  text_required: bool = True) -> TableCorpus:
    """A JSONL, JSON, CSV or TSV manifest; its audio and text columns found by name, or named. No
    rows at all (an empty file, a header alone) is an error, whatever the format.
    `text_required=False`: audio to transcribe (texts None when there is no text column)."""
    kind = manifest_kind(path)
    columns = _table_header(path, kind)
    corpus = TableCorpus(path, path.parent, "", None, kind, columns)
    if not columns or corpus.count() == 0:
        raise CorpusError(f"{path}: no rows")
    corpus.audio_col = find_column(path, columns, audio_column, AUDIO_COLUMNS, "audio")
    corpus.text_col = find_column(path, columns, text_column, TEXT_COLUMNS, "text", required=text_required)
    _check_span_columns(path, columns)
    return corpus


def is_commonvoice_tsv(path: Path) -> bool:
    if path.suffix.lower() != ".tsv" or not (path.parent / "clips").is_dir():
        return False
    columns = _table_header(path, "tsv")
    return "path" in columns and "sentence" in columns


def open_commonvoice(src: Path, split: str | None, text_required: bool = True) -> TableCorpus:
    """A Common Voice TSV (or a locale folder and `split`, default train): `path` in `clips/` beside
    it, `sentence`. Its own `segment` column is a benchmark tag, kept as metadata, not a span."""
    table = src if src.is_file() else src / f"{split or 'train'}.tsv"
    if not table.is_file():
        raise CorpusError(f"{table}: no such Common Voice split (use --split, e.g. train, dev, test, validated)")
    clips = table.parent / "clips"
    if not clips.is_dir():
        raise CorpusError(f"{table.parent}: Common Voice layout needs a clips/ folder beside the TSV")
    columns = _table_header(table, "tsv")
    for needed in ("path", *(("sentence",) if text_required else ())):
        if needed not in columns:
            raise CorpusError(f"{table}: Common Voice TSV needs a {needed!r} column; columns: {columns}")
    corpus = TableCorpus(table, clips, "path", "sentence" if "sentence" in columns else None, "tsv", columns,
                         spans=False)
    corpus.format = "commonvoice"
    return corpus
