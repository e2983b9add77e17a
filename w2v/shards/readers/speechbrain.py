"""SpeechBrain data manifests: a CSV (`ID`, `wav`, `wrd`, optional `start`/`stop`) or a JSON dict by ID.

As SpeechBrain's `dataio` reads them: `$name` placeholders in any field are replaced from
`--placeholder name=VALUE` (its `replacements`, e.g. `data_root`), and `start`/`stop` count samples
of the audio file at its own rate (a `wav` given as `{"file", "start", "stop"}` too). The
transcript is `wrd` (or `words`, `transcript`, or `--text-column`); other fields (`spk_id`,
`duration`, ...) become metadata.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from w2v.shards.readers.manifest import find_column
from w2v.shards.utterance import (
    Corpus,
    CorpusError,
    Keys,
    Utterance,
    checked_span,
    decoded_lines,
    source_meta,
    text_problem,
)

TEXT_FIELDS = ("wrd", "words", "transcript", "text")
PLACEHOLDER = re.compile(r"\$([\w.]+)")


def is_speechbrain(path: Path) -> bool:
    """A CSV whose header has `ID` and `wav`, or a JSON dict whose rows have `wav`."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".csv":
        header = next(decoded_lines(path), (1, ""))[1] or ""
        return {"ID", "wav"} <= set(next(csv.reader([header]), []))
    if path.suffix.lower() == ".json":
        with open(path, "rb") as handle:
            if not handle.read(4096).lstrip().startswith(b"{"):
                return False
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        first = next(iter(value.values()), None) if isinstance(value, dict) else None
        return isinstance(first, dict) and "wav" in first
    return False


def parse_placeholders(pairs: list[str] | None) -> dict[str, str]:
    """`name=value` strings → {name: value}."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CorpusError(f"--placeholder {pair!r}: give NAME=VALUE (e.g. data_root=/data)")
        out[name] = value
    return out


class SpeechBrainCorpus(Corpus):
    format = "speechbrain"

    def __init__(self, path: Path, placeholders: dict[str, str] | None = None, text_column: str | None = None,
                 text_required: bool = True):
        super().__init__(path.parent)
        self.path, self.placeholders = path, placeholders or {}
        self.rows_are_csv = path.suffix.lower() == ".csv"
        first = next(self._raw_rows(), None)
        if first is None:
            raise CorpusError(f"{path}: no rows")
        fields = list(first[1] or {})
        if "wav" not in fields:
            raise CorpusError(f"{path}: a SpeechBrain manifest needs a wav field; fields: {', '.join(fields)}")
        self.text_col = find_column(path, fields, text_column, TEXT_FIELDS, "text", required=text_required)
        missing = sorted({name for value in (first[1] or {}).values() if isinstance(value, str)
                          for name in PLACEHOLDER.findall(value)} - set(self.placeholders))
        if missing:
            raise CorpusError(f"{path}: fields use ${missing[0]}: give its value with --placeholder "
                              f"{missing[0]}=VALUE (SpeechBrain's replacements)")

    def describe(self) -> dict:
        return {**super().describe(), "manifest": str(self.path.resolve())}

    def _raw_rows(self) -> Iterator[tuple[int, dict | None]]:
        if not self.rows_are_csv:
            value = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(value, dict):
                raise CorpusError(f"{self.path}: a SpeechBrain JSON manifest is a dict of rows by ID")
            for number, (key, row) in enumerate(value.items(), start=1):
                yield number, {"ID": key, **row} if isinstance(row, dict) else None
            return
        lines = decoded_lines(self.path)
        header = next(csv.reader([next(lines, (1, ""))[1] or ""]))
        for number, line in lines:
            if line is None:
                yield number, None
            elif line.strip():
                yield number, dict(zip(header, next(csv.reader([line])), strict=False))

    def _replace(self, value):
        if isinstance(value, str):
            return PLACEHOLDER.sub(lambda m: self.placeholders.get(m.group(1), m.group(0)), value)
        if isinstance(value, dict):
            return {k: self._replace(v) for k, v in value.items()}
        return value

    def utterances(self) -> Iterator[Utterance]:
        keys = Keys()
        for number, row in self._raw_rows():
            source = f"{self.path.name}:{number}"
            if row is None:
                yield Utterance(keys(f"line{number}"), None, None, source, problem="bad_manifest_line")
                continue
            row = {k: self._replace(v) for k, v in row.items()}
            wav = row.get("wav")
            start, stop = row.get("start"), row.get("stop")
            if isinstance(wav, dict):  # {"file", "start", "stop"}
                wav, start, stop = wav.get("file"), wav.get("start", start), wav.get("stop", stop)
            text = row.get(self.text_col) if self.text_col else None
            text = None if text is None else str(text)
            key = keys(str(row.get("ID") or f"line{number}"))
            meta = source_meta(row, ("ID", "wav", "start", "stop", self.text_col or ""))
            if not wav:
                yield Utterance(key, None, text, source, meta, problem="no_audio_path")
                continue
            path = Path(str(wav))
            path = path if path.is_absolute() else self.root / path
            span = bad = None
            if start not in (None, "") or stop not in (None, ""):
                try:
                    span, bad = checked_span(float(start or 0), float(stop), unit="samples")
                except (TypeError, ValueError):
                    bad = f"start {start!r}, stop {stop!r}: not sample counts"
            if bad is not None:
                yield Utterance(key, path, text, source, meta, problem="bad_segment", detail=bad)
                continue
            if span is not None:
                meta["segment"] = span.as_meta()
            problem = text_problem(text) if self.text_col else None
            yield Utterance(key, path, text, f"{path.name}@{span}" if span else str(path), meta, problem, span)
