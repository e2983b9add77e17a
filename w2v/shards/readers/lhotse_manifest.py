"""Lhotse manifests (`.jsonl`, `.jsonl.gz`, `.json`): a cut set, or a supervision set with its recording set.

Each supervision is an utterance: its text, its span of the recording (a cut's supervisions are
placed relative to the cut), its channel. A cut or recording with no supervision is listed as
`no_supervision`. Recording sources of type `file` (a path, relative to the manifest's folder when
not absolute) and `command` (its stdout) are read; other types (`url`, `memory`, `shar`) are listed
as `unsupported_source`, and so is a recording with transforms other than resampling (speed
perturbation puts its supervisions on another timeline). The recording set of
`X_supervisions_Y.jsonl.gz` is `X_recordings_Y.jsonl.gz` beside it, as Lhotse's recipes name them
(a file without "supervisions" in its name is read as a manifest, not a Lhotse set). Lines are
decoded one at a time: one that is not UTF-8 JSON is `bad_manifest_line`, a gzip file cut short
ends where it is cut. Read with the standard library: no Lhotse needed.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from w2v.shards.utterance import Command, Corpus, CorpusError, Keys, Utterance, checked_span, text_problem

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def _is_manifest_name(path: Path) -> bool:
    return any(path.name.endswith(s) for s in SUFFIXES)


def _rows(path: Path) -> Iterator[dict | None]:
    """The objects of a JSONL (gzip or not) or JSON-list manifest, streamed line by line for JSONL;
    None for a line that is not a JSON object (or not UTF-8). A gzip file cut short ends the rows
    (the count and the rows read agree: both stop there)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        try:
            first = handle.readline()
            if first.lstrip().startswith(b"["):  # a JSON list: read whole
                for row in json.loads(first + handle.read()):
                    yield row if isinstance(row, dict) else None
                return
            for raw in itertools.chain([first], handle):
                if raw.strip():
                    yield _object(raw)
        except (EOFError, gzip.BadGzipFile, json.JSONDecodeError, UnicodeDecodeError):
            return


def _object(raw: bytes) -> dict | None:
    try:
        row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None


def manifest_kind(path: Path) -> str | None:
    """"cuts", "supervisions", "recordings" (from the first row's fields), or None: not Lhotse's."""
    if not (path.is_file() and _is_manifest_name(path)):
        return None
    try:
        first = next((r for r in _rows(path) if r is not None), None)
    except OSError:
        return None
    if not first:
        return None
    if "supervisions" in first and ("recording" in first or "type" in first):
        return "cuts"
    if {"id", "recording_id", "start", "duration"} <= first.keys() and recordings_beside(path) != path:
        return "supervisions"
    if {"sources", "sampling_rate"} <= first.keys():
        return "recordings"
    return None


def recordings_beside(supervisions: Path) -> Path:
    return supervisions.with_name(supervisions.name.replace("supervisions", "recordings"))


class LhotseCorpus(Corpus):
    format = "lhotse"

    def __init__(self, path: Path, text_required: bool = True):
        super().__init__(path.parent)
        self.path, self.kind = path, manifest_kind(path)
        self.text_required = text_required
        if self.kind is None:
            raise CorpusError(f"{path}: not a Lhotse cut, supervision or recording manifest")
        if self.kind == "recordings" and text_required:
            raise CorpusError(f"{path}: a Lhotse recording set has no transcripts: give its supervision set "
                              "(the recordings are found beside it) or a cut set")
        self.recordings_path = recordings_beside(path) if self.kind == "supervisions" else None
        if self.recordings_path is not None and not self.recordings_path.is_file():
            raise CorpusError(f"{path}: its recording set {self.recordings_path.name} is not beside it")

    def describe(self) -> dict:
        return {**super().describe(), "manifest": str(self.path.resolve()), "kind": self.kind}

    def _source(self, recording: dict, channel) -> tuple[object, int | None, str | None]:
        """(audio, channel index in that source or None, why not usable) of a recording."""
        altered = [t.get("name", "?") for t in recording.get("transforms") or [] if t.get("name") != "Resample"]
        if altered:  # speed perturbation and the like: the supervisions are on another timeline
            return None, None, f"transforms {', '.join(altered)}"
        sources = recording.get("sources") or []
        wanted = channel if isinstance(channel, int) else None
        source = next((s for s in sources if wanted is None or wanted in s.get("channels", [])), None)
        if source is None:
            return None, None, f"no source for channel {channel}"
        kind, where = source.get("type"), source.get("source")
        index = source["channels"].index(wanted) if wanted is not None and len(source.get("channels", [])) > 1 else None
        if kind == "file":
            path = Path(where)
            return (path if path.is_absolute() else self.root / path), index, None
        if kind == "command":
            return Command(where), index, None
        return None, None, f"source type {kind!r}"

    def _utterance(self, sup: dict, recording: dict, offset: float, keys: Keys, source: str) -> Utterance:
        text = sup.get("text")
        key = keys(str(sup.get("id") or f"{recording.get('id')}_sup"))
        meta = {k: sup[k] for k in ("speaker", "language", "gender") if sup.get(k) not in (None, "")}
        meta["recording"] = recording.get("id")
        audio, channel, why = self._source(recording, sup.get("channel"))
        if audio is None:
            return Utterance(key, None, text, source, meta, "unsupported_source", detail=why)
        try:
            start = offset + float(sup.get("start", 0.0))
            span, bad = checked_span(start, start + float(sup.get("duration", 0.0)))
        except (TypeError, ValueError):
            span, bad = None, f"start {sup.get('start')!r}, duration {sup.get('duration')!r}"
        if bad is not None:
            return Utterance(key, audio, text, source, meta, "bad_segment", detail=bad)
        meta["segment"] = span.as_meta()
        problem = text_problem(text) if text is not None or self.text_required else None
        return Utterance(key, audio, text, f"{source}@{span}", meta, problem, span, channel)

    def utterances(self) -> Iterator[Utterance]:
        keys = Keys()
        if self.kind == "cuts":
            yield from self._from_cuts(keys)
        elif self.kind == "supervisions":
            yield from self._from_supervisions(keys)
        else:  # recordings alone: whole recordings to transcribe
            for number, rec in enumerate(_rows(self.path), start=1):
                if rec is None:
                    yield Utterance(keys(f"line{number}"), None, None, f"{self.path.name}:{number}",
                                    problem="bad_manifest_line")
                    continue
                audio, _, why = self._source(rec, None)
                name = str(rec.get("id") or f"line{number}")
                yield Utterance(keys(name), audio, None, name, {}, None if audio else "unsupported_source",
                                detail=why or "")

    def _from_cuts(self, keys: Keys) -> Iterator[Utterance]:
        for number, cut in enumerate(_rows(self.path), start=1):
            where = f"{self.path.name}:{number}"
            name = str((cut or {}).get("id") or f"line{number}")
            if cut is None or not isinstance(cut.get("recording"), dict):
                reason = "bad_manifest_line" if cut is None else "unsupported_cut"
                yield Utterance(keys(name), None, None, where, problem=reason,
                                detail="" if cut is None else f"type {cut.get('type')}")
                continue
            if not cut.get("supervisions"):
                yield Utterance(keys(name), None, None, where, problem="no_supervision")
                continue
            try:
                offset = float(cut.get("start", 0.0))
            except (TypeError, ValueError):
                offset = float("nan")  # each supervision becomes a bad_segment
            for sup in cut["supervisions"]:
                yield self._utterance(sup, cut["recording"], offset, keys, str(cut["recording"].get("id")))

    def _from_supervisions(self, keys: Keys) -> Iterator[Utterance]:
        recordings: dict[str, dict] = {}
        bad_recordings = 0
        for rec in _rows(self.recordings_path):
            if rec is None or rec.get("id") is None:
                bad_recordings += 1
            else:
                recordings[str(rec["id"])] = rec
        used: set[str] = set()
        for number, sup in enumerate(_rows(self.path), start=1):
            where = f"{self.path.name}:{number}"
            if sup is None:
                yield Utterance(keys(f"line{number}"), None, None, where, problem="bad_manifest_line")
                continue
            rec = recordings.get(str(sup.get("recording_id")))
            if rec is None:
                yield Utterance(keys(str(sup.get("id") or f"line{number}")), None, sup.get("text"), where,
                                problem="missing_recording", detail=f"{sup.get('recording_id')} is not in "
                                f"{self.recordings_path.name}")
                continue
            used.add(str(rec["id"]))
            yield self._utterance(sup, rec, 0.0, keys, str(rec["id"]))
        for rec_id in recordings:  # recordings no supervision covers: listed, not lost
            if rec_id not in used:
                yield Utterance(keys(rec_id), None, None, rec_id, problem="no_supervision")
        for k in range(bad_recordings):
            yield Utterance(keys(f"recording_line{k}"), None, None, self.recordings_path.name,
                            problem="bad_manifest_line")
