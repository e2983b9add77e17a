"""Hugging Face `datasets`: parquet files (one, a glob, or the Hub's folder layouts) and `save_to_disk` folders.

Read with pyarrow, a row group or record batch at a time, a few rows converted to Python at once,
so a 100 GB parquet is streamed, never loaded. Audio is the `Audio` feature's struct
`{bytes, path}` (bytes in any container libsndfile or ffmpeg reads; or a path, relative to the
data file), found by the feature type the file records, or named with `--audio-column`; a plain
string column is a path. Text is `text`, `sentence`, `transcription` or `normalized_text`, or
`--text-column`.

    data/train-00000-of-00004.parquet     the Hub's layout: the split is the name's first part
    train/0000.parquet, en/train/0.parquet the parquet converter's: the split is the folder
    DIR/state.json + data-*.arrow          Dataset.save_to_disk
    DIR/dataset_dict.json + SPLIT/...      DatasetDict.save_to_disk (--split names one)
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from w2v.shards.readers.manifest import KEY_COLUMNS, TEXT_COLUMNS, find_column
from w2v.shards.utterance import Corpus, CorpusError, Keys, Utterance, source_meta, text_problem

ROWS_AT_ONCE = 32  # rows turned into Python objects together: bounds memory to a few recordings


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise CorpusError("reading Hugging Face datasets needs pyarrow: pip install 'w2v[hf]' "
                          "(or pip install pyarrow)") from None
    return pyarrow


def is_hf_source(src: str | Path) -> bool:
    src = Path(src)
    if src.is_file():
        return src.suffix == ".parquet"
    if src.is_dir():
        return ((src / "state.json").is_file() or (src / "dataset_dict.json").is_file()
                or any(src.glob("*.parquet")) or any(src.glob("*/*.parquet")) or any(src.glob("*/*/*.parquet")))
    return glob.has_magic(str(src)) and any(p.endswith(".parquet") for p in glob.glob(str(src)))


def _split_of(path: Path, root: Path) -> str:
    """A parquet file's split: its folder (train/0000.parquet), else the first part of its name
    (data/train-00000-of-00001.parquet)."""
    parent = path.parent
    if parent != root and parent.name != "data":
        return parent.name
    return path.stem.split("-")[0]


def _choose(files_by_split: dict[str, list[Path]], split: str | None, where: str) -> list[Path]:
    if split is not None:
        if split not in files_by_split:
            raise CorpusError(f"{where}: no split {split!r}; splits: {', '.join(sorted(files_by_split))}")
        return files_by_split[split]
    if len(files_by_split) > 1:
        raise CorpusError(f"{where}: several splits ({', '.join(sorted(files_by_split))}): choose one with --split")
    return next(iter(files_by_split.values()))


def data_files(src: Path, split: str | None) -> list[Path]:
    """The parquet or Arrow files of a source, in order; a missing split is a CorpusError."""
    if src.is_file():
        return [src]
    if not src.exists():
        found = sorted(Path(p) for p in glob.glob(str(src)) if p.endswith(".parquet"))
        if not found:
            raise CorpusError(f"{src}: matches no parquet file")
        return found
    if (src / "dataset_dict.json").is_file():
        splits = json.loads((src / "dataset_dict.json").read_text())["splits"]
        chosen = _choose({s: [src / s] for s in splits}, split, str(src))[0]
        return data_files(chosen, None)
    if (src / "state.json").is_file():
        state = json.loads((src / "state.json").read_text())
        return [src / f["filename"] for f in state["_data_files"]]
    by_split: dict[str, list[Path]] = {}
    for path in sorted(src.rglob("*.parquet")):
        by_split.setdefault(_split_of(path, src), []).append(path)
    if not by_split:
        raise CorpusError(f"{src}: no parquet files, state.json or dataset_dict.json")
    return _choose(by_split, split, str(src))


class HuggingFaceCorpus(Corpus):
    format = "huggingface"

    def __init__(self, src: Path, split: str | None, audio_column: str | None, text_column: str | None,
                 text_required: bool = True):
        self.pa = _pyarrow()
        self.files = data_files(src, split)
        super().__init__(src if src.is_dir() else self.files[0].parent)
        self.src = src
        schema = self._schema(self.files[0])
        self.audio_col = self._audio_column(schema, audio_column)
        self.text_col = find_column(self.files[0], schema.names, text_column, TEXT_COLUMNS, "text",
                                    required=text_required)

    def describe(self) -> dict:
        return {"format": self.format, "path": str(self.src.resolve()), "files": [f.name for f in self.files]}

    def _schema(self, path: Path):
        if path.suffix == ".parquet":
            return self.pa.parquet.ParquetFile(path).schema_arrow
        with self.pa.memory_map(str(path)) as source:
            return self.pa.ipc.open_stream(source).schema

    def _audio_column(self, schema, given: str | None) -> str:
        if given is not None:
            return find_column(self.files[0], schema.names, given, (), "audio")
        features = json.loads((schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {}).get("features", {})
        for name, feature in features.items():  # what datasets recorded as its Audio feature
            if isinstance(feature, dict) and feature.get("_type") == "Audio" and name in schema.names:
                return name
        for field in schema:  # else a struct of bytes and path, as the Audio feature stores it
            if self.pa.types.is_struct(field.type) and {"bytes", "path"} <= {f.name for f in field.type}:
                return field.name
        raise CorpusError(f"{self.files[0]}: no Audio column (a struct of bytes and path); name it with "
                          f"--audio-column; columns: {', '.join(schema.names)}")

    def _batches(self, path: Path) -> Iterator:
        if path.suffix == ".parquet":
            yield from self.pa.parquet.ParquetFile(path).iter_batches(batch_size=ROWS_AT_ONCE)
            return
        with self.pa.memory_map(str(path)) as source:
            for batch in self.pa.ipc.open_stream(source):
                for start in range(0, batch.num_rows, ROWS_AT_ONCE):
                    yield batch.slice(start, ROWS_AT_ONCE)

    def count(self) -> int:
        total = 0
        for path in self.files:
            if path.suffix == ".parquet":
                total += self.pa.parquet.ParquetFile(path).metadata.num_rows
            else:
                with self.pa.memory_map(str(path)) as source:
                    total += sum(batch.num_rows for batch in self.pa.ipc.open_stream(source))
        return total

    def utterances(self) -> Iterator[Utterance]:
        keys = Keys()
        for path in self.files:
            number = 0
            for batch in self._batches(path):
                for row in batch.to_pylist():
                    number += 1
                    yield self._utterance(row, path, number, keys)

    def _utterance(self, row: dict, path: Path, number: int, keys: Keys) -> Utterance:
        source = f"{path.name}:{number}"
        value = row.get(self.audio_col)
        stored, data = (value.get("path"), value.get("bytes")) if isinstance(value, dict) else (value, None)
        given = next((row[c] for c in KEY_COLUMNS if row.get(c) not in (None, "")), None)
        name = str(given) if given is not None else Path(stored).stem if stored else f"{path.stem}_{number}"
        text = row.get(self.text_col) if self.text_col else None
        text = None if text is None else str(text)
        meta = {k: v for k, v in source_meta(row, (self.audio_col, self.text_col or "")).items()
                if isinstance(v, str | int | float | bool)}
        if stored:
            meta["audio_path"] = stored
        if data:
            audio = bytes(data)
        elif stored:
            audio = Path(stored) if Path(stored).is_absolute() else path.parent / stored
        else:
            return Utterance(keys(name), None, text, source, meta, problem="no_audio")
        problem = text_problem(text) if self.text_col else None
        return Utterance(keys(name), audio, text, source, meta, problem)
