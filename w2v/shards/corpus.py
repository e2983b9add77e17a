"""Every corpus layout a speech team has, read one way: `open_corpus(src)` → a `Corpus` of `Utterance`s.

w2v-make-shards and w2v-transcribe read corpora through here, so they read the same corpus the same
way. Each reader checks the structure up front (a `CorpusError` before any audio work) and yields
one `Utterance` per input, with a reason when it cannot be used (`w2v.shards.utterance` states the
rules: nothing is lost without a reason).

| format        | source                                                                 | reader            |
|---------------|------------------------------------------------------------------------|-------------------|
| commonvoice   | a Common Voice TSV with clips/ beside it, or the locale folder + split  | readers.manifest  |
| librispeech   | a split folder of SPK/CHAP/*.flac and *.trans.txt                       | readers.librispeech |
| manifest      | JSONL (NeMo's .json lines too), a JSON list or dict, CSV, TSV           | readers.manifest  |
| huggingface   | parquet (a file, a glob, the Hub's folders) or a save_to_disk folder    | readers.huggingface |
| kaldi         | a data directory: wav.scp, text, segments, utt2spk, reco2file_and_channel | readers.kaldi   |
| lhotse        | a cut set, or a supervision set with its recording set beside it       | readers.lhotse_manifest |
| speechbrain   | a CSV with ID and wav (start/stop in samples), or a JSON dict by ID     | readers.speechbrain |
| audio         | audio files, or a folder of them (transcription only: no transcripts)   | readers.audio_folder |
"""

from __future__ import annotations

import glob
from pathlib import Path

from w2v.shards.readers.audio_folder import AudioFolder
from w2v.shards.readers.huggingface import HuggingFaceCorpus, is_hf_source
from w2v.shards.readers.kaldi import KaldiCorpus, is_kaldi_dir
from w2v.shards.readers.lhotse_manifest import LhotseCorpus
from w2v.shards.readers.lhotse_manifest import manifest_kind as lhotse_kind
from w2v.shards.readers.librispeech import LibriSpeechCorpus
from w2v.shards.readers.manifest import MANIFEST_SUFFIXES, is_commonvoice_tsv, open_commonvoice, open_manifest
from w2v.shards.readers.speechbrain import SpeechBrainCorpus, is_speechbrain, parse_placeholders
from w2v.shards.utterance import Corpus, CorpusError, Utterance, safe_key

__all__ = ["FORMATS", "Corpus", "CorpusError", "Utterance", "detect_format", "open_corpus", "parse_placeholders",
           "safe_key"]

FORMATS = ("auto", "commonvoice", "librispeech", "manifest", "huggingface", "kaldi", "lhotse", "speechbrain",
           "audio")
KNOWN = ("Common Voice: clips/ + TSVs; LibriSpeech: SPK/CHAP/*.trans.txt; Kaldi: wav.scp; Hugging Face: "
         "*.parquet, state.json or dataset_dict.json; or a manifest file")


def detect_format(src: Path, split: str | None = None, audio_allowed: bool = False) -> str:
    """The layout of `src`, when it is unambiguous; a CorpusError that lists the known ones if not."""
    if src.is_file():
        if is_commonvoice_tsv(src):
            return "commonvoice"
        if is_hf_source(src):
            return "huggingface"
        if lhotse_kind(src) is not None:
            return "lhotse"
        if is_speechbrain(src):
            return "speechbrain"
        if src.suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        if audio_allowed:  # any other file is a recording: its decoder (or ffmpeg) will say if it is not
            return "audio"
        raise CorpusError(f"{src}: not a Common Voice TSV, a manifest ({', '.join(MANIFEST_SUFFIXES)}), "
                          "a parquet file or a Lhotse manifest")
    if src.is_dir():
        if (src / "clips").is_dir() and (split or any(src.glob("*.tsv"))):
            return "commonvoice"
        if is_kaldi_dir(src):
            return "kaldi"
        if any(src.glob("*/*/*.trans.txt")):
            return "librispeech"
        if is_hf_source(src):
            return "huggingface"
        if audio_allowed:
            return "audio"
        raise CorpusError(f"{src}: no known layout ({KNOWN})")
    if glob.has_magic(str(src)) and is_hf_source(src):
        return "huggingface"
    raise CorpusError(f"{src}: no such file or folder")


def open_corpus(src: str | Path, fmt: str = "auto", split: str | None = None, audio_column: str | None = None,
                text_column: str | None = None, placeholders: dict[str, str] | None = None,
                text_required: bool = True) -> Corpus:
    """Detect (for `auto`) and open a corpus; a CorpusError on structural problems, before any audio
    work. `text_required=False` reads audio to transcribe: transcripts where there are, else None,
    and plain audio files and folders too."""
    src = Path(src)
    if fmt not in FORMATS:
        raise CorpusError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not src.exists() and not glob.has_magic(str(src)):
        raise CorpusError(f"{src}: no such file or folder")
    fmt = detect_format(src, split, audio_allowed=not text_required) if fmt == "auto" else fmt
    try:
        return _open(src, fmt, split, audio_column, text_column, placeholders, text_required)
    except CorpusError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a source that is not what --format says
        raise CorpusError(f"{src}: not a readable {fmt} source ({type(exc).__name__}: {exc})") from None


def _open(src: Path, fmt: str, split: str | None, audio_column: str | None, text_column: str | None,
          placeholders: dict[str, str] | None, text_required: bool) -> Corpus:
    if fmt == "commonvoice":
        return open_commonvoice(src, split, text_required)
    if fmt == "librispeech":
        if not src.is_dir():
            raise CorpusError(f"{src}: LibriSpeech source must be a split folder such as test-clean")
        return LibriSpeechCorpus(src)
    if fmt == "huggingface":
        return HuggingFaceCorpus(src, split, audio_column, text_column, text_required)
    if fmt == "kaldi":
        return KaldiCorpus(src, text_required)
    if fmt == "lhotse":
        return LhotseCorpus(src, text_required)
    if fmt == "speechbrain":
        if not src.is_file():
            raise CorpusError(f"{src}: a SpeechBrain manifest is a CSV or JSON file")
        return SpeechBrainCorpus(src, placeholders, text_column, text_required)
    if fmt == "audio":
        return AudioFolder(src)
    if src.is_dir():
        raise CorpusError(f"{src}: a manifest source must be a file")
    return open_manifest(src, audio_column, text_column, text_required)
