"""Lhotse manifests (`.jsonl`, `.jsonl.gz`, `.json`): a cut set, or a supervision set with its recording set.

Each supervision is an utterance: its text, its span of the recording (a cut's supervisions are
placed relative to the cut), its channel. A cut or recording with no supervision is listed as
`no_supervision`. Recording sources of type `file` (a path, relative to the manifest's folder when
not absolute) and `command` (its stdout) are read; other types (`url`, `memory`, `shar`) are listed
as `unsupported_source`. The recording set of `X_supervisions_Y.jsonl.gz` is `X_recordings_Y.jsonl.gz`
beside it, as Lhotse's recipes name them. Read with the standard library: no Lhotse needed.
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
    """The objects of a JSONL (gzip or not) or JSON-list manifest, streamed for JSONL; None for a
    line that is not a JSON object."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        head = handle.read(1)
        while head.isspace():
            head = handle.read(1)
        if head == "[":
            for row in json.loads(head + handle.read()):
                yield row if isinstance(row, dict) else None
            return
        for line in itertools.chain([head + handle.readline()], handle):  # streamed, line by line
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                yield row if isinstance(row, dict) else None


def manifest_kind(path: Path) -> str | None:
    """"cuts", "supervisions", "recordings" (from the first row's fields), or None: not Lhotse's."""
    if not (path.is_file() and _is_manifest_name(path)):
        return None
    try:
        first = next((r for r in _rows(path) if r is not None), None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError):
        return None
    if not first:
        return None
    if "supervisions" in first and ("recording" in first or "type" in first):
        return "cuts"
    if {"recording_id", "start", "duration"} <= first.keys():
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
        meta = {k: sup[k] for k in ("speaker", "language", "gender") if sup.get(k) not in (None, "")}
        meta["recording"] = recording.get("id")
        audio, channel, why = self._source(recording, sup.get("channel"))
        start = offset + float(sup.get("start", 0.0))
        span, bad = checked_span(start, start + float(sup.get("duration", 0.0)))
        if audio is None:
            return Utterance(keys(sup.get("id", "sup")), None, text, source, meta, "unsupported_source", detail=why)
        if bad is not None:
            return Utterance(keys(sup["id"]), audio, text, source, meta, "bad_segment", detail=bad)
        meta["segment"] = span.as_meta()
        problem = text_problem(text) if text is not None or self.text_required else None
        return Utterance(keys(sup["id"]), audio, text, f"{source}@{span}", meta, problem, span, channel)

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
                yield Utterance(keys(rec["id"]), audio, None, rec["id"], {}, None if audio else "unsupported_source",
                                detail=why or "")

    def _from_cuts(self, keys: Keys) -> Iterator[Utterance]:
        for number, cut in enumerate(_rows(self.path), start=1):
            where = f"{self.path.name}:{number}"
            if cut is None or "recording" not in cut:
                reason = "bad_manifest_line" if cut is None else "unsupported_cut"
                yield Utterance(keys(f"line{number}" if cut is None else cut.get("id", "cut")), None, None, where,
                                problem=reason, detail="" if cut is None else f"type {cut.get('type')}")
                continue
            if not cut.get("supervisions"):
                yield Utterance(keys(cut["id"]), None, None, where, problem="no_supervision")
                continue
            for sup in cut["supervisions"]:
                yield self._utterance(sup, cut["recording"], float(cut.get("start", 0.0)), keys, cut["recording"]["id"])

    def _from_supervisions(self, keys: Keys) -> Iterator[Utterance]:
        recordings: dict[str, dict] = {}
        bad_recordings = 0
        for rec in _rows(self.recordings_path):
            if rec is None:
                bad_recordings += 1
            else:
                recordings[rec["id"]] = rec
        used: set[str] = set()
        for number, sup in enumerate(_rows(self.path), start=1):
            where = f"{self.path.name}:{number}"
            if sup is None:
                yield Utterance(keys(f"line{number}"), None, None, where, problem="bad_manifest_line")
                continue
            rec = recordings.get(sup.get("recording_id"))
            if rec is None:
                yield Utterance(keys(sup.get("id", f"line{number}")), None, sup.get("text"), where,
                                problem="missing_recording", detail=f"{sup.get('recording_id')} is not in "
                                f"{self.recordings_path.name}")
                continue
            used.add(rec["id"])
            yield self._utterance(sup, rec, 0.0, keys, rec["id"])
        for rec_id in recordings:  # recordings no supervision covers: listed, not lost
            if rec_id not in used:
                yield Utterance(keys(rec_id), None, None, rec_id, problem="no_supervision")
        for k in range(bad_recordings):
            yield Utterance(keys(f"recording_line{k}"), None, None, self.recordings_path.name,
                            problem="bad_manifest_line")
