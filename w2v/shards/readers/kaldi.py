"""Kaldi data directories: `wav.scp` and `text`, with `segments`, `utt2spk`, `reco2file_and_channel` when present.

    wav.scp                 RECID PATH, or RECID COMMAND ... |   (the command writes the audio to stdout)
    text                    UTTID TRANSCRIPT
    segments                UTTID RECID START END   (seconds; END -1: to the end of the recording)
    utt2spk                 UTTID SPEAKER
    reco2file_and_channel   RECID FILE CHANNEL      (A/B or 1/2: which channel of a multi-channel file)

Without `segments`, utterance ids are recording ids. Commands run without a shell when they are
plain words (through bash when they need one), with a time-out (`w2v.shards.audio`). Inputs are
the utterances of `text` in its order, then what `text` lacks: segments or recordings with no
transcript (`no_transcript`); a transcript whose audio is not listed is `missing_recording`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from w2v.shards.utterance import (
    Command,
    Corpus,
    CorpusError,
    Keys,
    Span,
    Utterance,
    checked_span,
    decoded_lines,
    text_problem,
)

CHANNELS = {"A": 0, "B": 1, "1": 0, "2": 1}


def is_kaldi_dir(src: Path) -> bool:
    return src.is_dir() and (src / "wav.scp").is_file()


def _table(path: Path) -> dict[str, str]:
    """`ID rest of line` per line (UTF-8; a line that is not is skipped by the caller's counts)."""
    table: dict[str, str] = {}
    if path.is_file():
        for _, line in decoded_lines(path):
            if line and line.strip():
                key, *rest = line.split(maxsplit=1)  # any white space, as Kaldi's readers take it
                table[key] = rest[0].strip() if rest else ""
    return table


def recipe_dir(root: Path) -> Path:
    """Where Kaldi's recipe runs, which its relative paths and commands assume: `s5` for
    `s5/data/train`, else the directory's parent."""
    return root.parent.parent if root.parent.name == "data" else root.parent


def audio_of(entry: str, root: Path) -> Path | Command:
    """A wav.scp entry: a path (relative to the recipe's folder, else to the directory itself) or a
    command ending in `|`, run in the recipe's folder."""
    base = recipe_dir(root)
    if entry.endswith("|"):
        return Command(entry[:-1].strip(), cwd=str(base))
    path = Path(entry)
    if path.is_absolute():
        return path
    return next((p for p in (base / path, root.parent / path, root / path) if p.exists()), base / path)


class KaldiCorpus(Corpus):
    format = "kaldi"

    def __init__(self, root: Path, text_required: bool = True):
        super().__init__(root)
        if not is_kaldi_dir(root):
            raise CorpusError(f"{root}: a Kaldi data directory needs wav.scp")
        if text_required and not (root / "text").is_file():
            raise CorpusError(f"{root}: a Kaldi data directory needs a text file to shard (wav.scp alone has no "
                              "transcripts)")
        self.recordings = _table(root / "wav.scp")
        self.segments = _table(root / "segments") if (root / "segments").is_file() else None
        self.speakers = _table(root / "utt2spk")
        self.channels = {rec: rest.split()[-1] for rec, rest in _table(root / "reco2file_and_channel").items()}

    def _span(self, utt: str) -> tuple[str, Span | None, str | None]:
        """(recording id, span or None, why the segment line is unusable or None)."""
        if self.segments is None:
            return utt, None, None
        fields = self.segments[utt].split()
        if len(fields) != 3:
            return fields[0] if fields else "", None, f"segments line: {utt} {self.segments[utt]}"
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            return fields[0], None, f"segments line: {utt} {self.segments[utt]}"
        if end == -1:  # Kaldi's convention: to the end of the recording
            end = math.inf
            return (fields[0], Span(start, end), None) if start >= 0 else (fields[0], None, f"start {start}")
        span, why = checked_span(start, end)
        return fields[0], span, why

    def _utterance(self, utt: str, text: str | None, keys: Keys) -> Utterance:
        rec, span, bad = self._span(utt) if self.segments is None or utt in self.segments else (utt, None, None)
        meta = {"recording": rec, **({"speaker": self.speakers[utt]} if utt in self.speakers else {})}
        entry = self.recordings.get(rec)
        source = f"{rec}@{span}" if span is not None else rec
        if entry is None:
            return Utterance(keys(utt), None, text, source, meta, problem="missing_recording",
                             detail=f"{rec} is not in wav.scp")
        audio = audio_of(entry, self.root)
        channel = CHANNELS.get(self.channels.get(rec, ""))
        if bad is not None:
            return Utterance(keys(utt), audio, text, source, meta, problem="bad_segment", detail=bad)
        if span is not None:
            meta["segment"] = {"start": span.start, "end": None if math.isinf(span.end) else span.end}
        if text is None and (self.root / "text").is_file():  # a transcript file that lacks this one
            return Utterance(keys(utt), audio, None, source, meta, "no_transcript", span, channel,
                             detail="no line in text")
        problem = text_problem(text) if text is not None else None  # None: audio to transcribe
        return Utterance(keys(utt), audio, text, source, meta, problem, span, channel)

    def utterances(self) -> Iterator[Utterance]:
        keys, seen = Keys(), set()
        text_file = self.root / "text"
        for number, line in decoded_lines(text_file) if text_file.is_file() else ():
            if line is None:
                yield Utterance(keys(f"text_line{number}"), None, None, f"text:{number}", problem="text_decode_error")
                continue
            if not line.strip():
                continue
            utt, *rest = line.split(maxsplit=1)
            seen.add(utt)
            if self.segments is not None and utt not in self.segments:
                yield Utterance(keys(utt), None, rest[0] if rest else "", f"text:{number}",
                                problem="missing_recording", detail=f"{utt} is not in segments")
                continue
            yield self._utterance(utt, rest[0] if rest else "", keys)
        # what the transcripts do not cover: listed, not lost
        units = self.segments if self.segments is not None else self.recordings
        for utt in units:
            if utt not in seen:
                yield self._utterance(utt, None, keys)
        if self.segments is not None:
            used = {fields.split()[0] for fields in self.segments.values() if fields.split()}
            for rec in self.recordings:
                if rec not in used:
                    yield Utterance(keys(rec), audio_of(self.recordings[rec], self.root), None, rec,
                                    {"recording": rec}, problem="no_transcript", detail="a recording with no segment")
