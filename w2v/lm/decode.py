"""CTC decoding: greedy (vectorised numpy) and beam search with a KenLM n-gram through pyctcdecode.

Public API, used by train.py and w2v-evaluate (keep these signatures):

- `greedy_decode(logits, inverse_vocab, blank_id, lengths) -> list[str]`
- `labels_from_vocab(tokens, size=None) -> list[str]`: pyctcdecode labels in id order
- `build_lm_decoder(labels, lm_path, unigrams, alpha, beta)`: a pyctcdecode `BeamSearchDecoderCTC`
- `export_processor_with_lm(model_dir, lm_dir, alpha, beta)`: `Wav2Vec2ProcessorWithLM` into a model
  folder, so `transformers.pipeline("automatic-speech-recognition", model=folder)` decodes with the LM.
- `BeamDecoder`: one decoder (one KenLM load) for many utterances, batches in a fork pool, and new
  alpha/beta without reloading the LM (a grid search).

Labels are one per logit column, in id order: the CTC blank `[PAD]` as "", the word delimiter `|` as
" ", `[UNK]` as "⁇" (pyctcdecode's own unknown symbol: one character, unique). Tokens a tokenizer
appends after the model's vocabulary (Wav2Vec2CTCTokenizer adds `<s>` and `</s>`; the CTC head has
no column for them) are cut off with `size`, so the labels match the logits' width.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from w2v.atomic import replace_path
from w2v.text import PAD, UNK, WORD_DELIMITER, Vocabulary

UNK_LABEL = "⁇"  # pyctcdecode.alphabet.UNK_TOKEN
LM_SUFFIXES = (".bin", ".binary", ".arpa")  # the model files pyctcdecode's language_model/ accepts
UNIGRAMS_FILE = "unigrams.txt"  # written beside the LM by w2v-build-lm


# --- greedy ------------------------------------------------------------------------------------


def greedy_decode(logits: np.ndarray, inverse_vocab: dict[int, str], blank_id: int,
                  lengths: Sequence[int] | np.ndarray | None = None) -> list[str]:
    """Best paths of logits [B, T, V] (or one [T, V]) with valid frames per row → texts.

    argmax per frame, repeats collapsed (a blank between two equal ids keeps both), blanks dropped,
    `|` → space, spaces stripped and collapsed: all but the final join in numpy.
    """
    logits = np.asarray(logits)
    if logits.ndim == 2:
        logits = logits[None]
    if logits.ndim != 3:
        raise ValueError(f"expected logits [B, T, V] or [T, V], got shape {logits.shape}")
    batch, frames, width = logits.shape
    ids = logits.argmax(axis=-1)
    lengths = np.full(batch, frames) if lengths is None else np.asarray(lengths)
    keep = np.arange(frames)[None, :] < lengths[:, None]
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]  # the first frame of each run
    keep &= ids != blank_id
    table = np.array([inverse_vocab.get(i, "") for i in range(width)], dtype=object)
    table[table == WORD_DELIMITER] = " "
    return [" ".join("".join(table[row[mask]]).split()) for row, mask in zip(ids, keep, strict=True)]


# --- labels ------------------------------------------------------------------------------------


def labels_from_vocab(tokens: dict[str, int], size: int | None = None, *, pad: str = PAD, unk: str = UNK,
                      delimiter: str = WORD_DELIMITER) -> list[str]:
    """Labels in id order for ids 0..size-1 (size: the logits' width; default: the whole vocabulary)."""
    by_id = {i: token for token, i in tokens.items()}
    size = len(by_id) if size is None else size
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise ValueError(f"vocabulary ids must run 0..{size - 1}: no token for {missing[:10]}")
    special = {pad: "", delimiter: " ", unk: UNK_LABEL}
    labels = [special.get(by_id[i], by_id[i]) for i in range(size)]
    if "" not in labels:
        raise ValueError(f"no CTC blank: {pad!r} is not among the first {size} tokens")
    if len(set(labels)) != len(labels):
        raise ValueError("two tokens give the same label (a literal space or ⁇ in the vocabulary?)")
    return labels


def tokenizer_labels(tokenizer: Any, size: int | None = None) -> list[str]:
    """Labels from a Wav2Vec2CTCTokenizer: its vocabulary sorted by id, cut to ``size``."""
    return labels_from_vocab(tokenizer.get_vocab(), size, pad=tokenizer.pad_token, unk=tokenizer.unk_token,
                             delimiter=tokenizer.word_delimiter_token)


# --- beam search with an n-gram ----------------------------------------------------------------


def find_lm_file(lm: str | os.PathLike) -> Path:
    """The KenLM file to use: ``lm`` itself, or in a folder its one LM: the binary (loads faster),
    else the ARPA. A folder with files of two different LMs (``3gram.arpa`` beside ``4gram.bin``)
    is refused: which one was meant cannot be told."""
    path = Path(lm)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such LM file or folder")
    found = sorted(p for suffix in LM_SUFFIXES for p in path.glob(f"*{suffix}"))
    models = sorted({p.name[: -len(p.suffix)] for p in found})
    if len(models) > 1:
        raise ValueError(f"{path} holds more than one LM ({', '.join(p.name for p in found)}): pass the file")
    for suffix in LM_SUFFIXES:
        for candidate in found:
            if candidate.suffix == suffix:
                return candidate
    raise FileNotFoundError(f"no KenLM model ({', '.join(LM_SUFFIXES)}) in {path}")


def load_unigrams(lm_file: str | os.PathLike) -> list[str] | None:
    """The LM's words from unigrams.txt beside it, or None for an ARPA without one (pyctcdecode reads
    an ARPA's 1-grams itself). A binary needs them: without, pyctcdecode only warns and decodes worse."""
    lm_file = Path(lm_file)
    listed = lm_file.with_name(UNIGRAMS_FILE)
    if listed.is_file():
        return listed.read_text(encoding="utf-8").split()
    if lm_file.suffix == ".arpa":
        return None
    raise FileNotFoundError(f"{lm_file} is a binary LM and has no {UNIGRAMS_FILE} beside it: pass its words "
                            "(w2v-build-lm writes that file)")


def build_lm_decoder(labels: Sequence[str], lm_path: str | os.PathLike | None,
                     unigrams: Sequence[str] | None = None, alpha: float = 0.5, beta: float = 1.0) -> Any:
    """A pyctcdecode BeamSearchDecoderCTC. ``lm_path``: a KenLM file, a folder holding one, or None (no LM).
    Unigrams default to unigrams.txt beside the model; an ARPA without one is read by pyctcdecode."""
    from pyctcdecode import build_ctcdecoder

    # "Only N unigrams passed as vocabulary. Is this small or artificial data?": nothing to act on
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    if lm_path is None:
        return build_ctcdecoder(list(labels))
    lm_file = find_lm_file(lm_path)
    if unigrams is None:
        unigrams = load_unigrams(lm_file)
    # Floats: pyctcdecode's reset_params (used by BeamDecoder.set_weights) rejects ints.
    return build_ctcdecoder(list(labels), str(lm_file), unigrams=unigrams, alpha=float(alpha), beta=float(beta))


class BeamDecoder:
    """Beam search over many utterances with one decoder: one KenLM load, batches in a fork pool.

        with BeamDecoder(labels, "runs/lm", alpha=0.5, beta=1.0, processes=4) as decoder:
            texts = decoder.decode_batch(log_probs)          # a list of [T_i, V], or [B, T, V] + lengths
            decoder.set_weights(0.8, 2.0)                    # next grid point, same LM
    """

    def __init__(self, labels: Sequence[str], lm: str | os.PathLike | None = None,
                 unigrams: Sequence[str] | None = None, alpha: float = 0.5, beta: float = 1.0,
                 beam_width: int = 100, processes: int = 1):
        self.labels = list(labels)
        self.lm_file = find_lm_file(lm) if lm is not None else None
        self.decoder = build_lm_decoder(self.labels, self.lm_file, unigrams, alpha, beta)
        self.beam_width = beam_width
        self.processes = processes
        self._pool: Any = None

    def describe(self) -> str:
        """Which LM it decodes with: the file, its order and size (or that there is none)."""
        if self.lm_file is None:
            return "no LM (beam search over the acoustic model alone)"
        order = self.decoder._language_model.order  # pyctcdecode's LanguageModel, as KenLM loaded it
        return f"{self.lm_file} ({order}-gram, {self.lm_file.stat().st_size / 1e6:.1f} MB)"

    def set_weights(self, alpha: float, beta: float) -> None:
        """New LM weight and word bonus. The pool restarts: its children hold the weights they forked with."""
        self.decoder.reset_params(alpha=float(alpha), beta=float(beta))
        self._close_pool()

    def decode(self, logits: np.ndarray) -> str:
        """One utterance, logits [T, V]: raw or log-probs (pyctcdecode applies a log-softmax)."""
        return self.decoder.decode(np.asarray(logits, dtype=np.float32), beam_width=self.beam_width)

    def decode_batch(self, logits: np.ndarray | Sequence[np.ndarray],
                     lengths: Sequence[int] | np.ndarray | None = None) -> list[str]:
        """A padded [B, T, V] array with valid frames per row, or a list of [T_i, V] arrays."""
        items = _unpad(logits, lengths)
        pool = self._get_pool() if self.processes > 1 and len(items) > 1 else None
        return self.decoder.decode_batch(pool, items, beam_width=self.beam_width)

    def _get_pool(self) -> Any:
        # A fork pool made after the decoder: pyctcdecode keeps the KenLM model in a class-level dict
        # that the children inherit; a spawn pool would make pyctcdecode decode in this process.
        if self._pool is None:
            self._pool = multiprocessing.get_context("fork").Pool(self.processes)
        return self._pool

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def close(self) -> None:
        """Stop the pool and drop the LM from pyctcdecode's class-level container."""
        self._close_pool()
        self.decoder.cleanup()

    def __enter__(self) -> BeamDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unpad(logits: np.ndarray | Sequence[np.ndarray], lengths: Sequence[int] | np.ndarray | None) -> list[np.ndarray]:
    if isinstance(logits, np.ndarray) and logits.ndim == 3:
        lengths = [logits.shape[1]] * len(logits) if lengths is None else lengths
        return [np.ascontiguousarray(row[:n], dtype=np.float32) for row, n in zip(logits, lengths, strict=True)]
    if lengths is not None:
        raise ValueError("lengths go with a padded [B, T, V] array, not with a list of utterances")
    return [np.asarray(x, dtype=np.float32) for x in logits]


# --- export for transformers.pipeline ----------------------------------------------------------


def export_processor_with_lm(model_dir: str | os.PathLike, lm_dir: str | os.PathLike, alpha: float = 0.5,
                             beta: float = 1.0, unigrams: Sequence[str] | None = None) -> Path:
    """Save Wav2Vec2ProcessorWithLM into ``model_dir`` (a saved Wav2Vec2ForCTC with its processor).

    ``lm_dir``: a w2v-build-lm folder (its binary is preferred) or a KenLM file. Afterwards the
    folder holds alphabet.json and language_model/ with exactly attrs.json, unigrams.txt and one model
    file (a copy), and rewritten processor files; returns the language_model/ path. Two transformers 5
    details are handled: the tokenizer is rebuilt without the `<s>`/`</s>` it appends (the processor
    wants every tokenizer token among the decoder's labels, the decoder one label per logit), and
    `processor_class` is also written into the feature-extractor part of processor_config.json,
    which is where pipeline() looks for "WithLM" (else it silently decodes greedily).
    """
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ProcessorWithLM
    from transformers.utils import logging as hf_logging

    # its deprecation notice and save bars say nothing the user can act on here: the folder is
    # made for pipeline(), and w2v-transcribe reads language_model/ without that class
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return _save_with_lm(Path(model_dir), lm_dir, alpha, beta, unigrams, Wav2Vec2FeatureExtractor,
                             Wav2Vec2ProcessorWithLM)
    finally:
        hf_logging.set_verbosity(verbosity)


def _save_with_lm(model_dir: Path, lm_dir, alpha: float, beta: float, unigrams, extractor_class,
                  processor_class) -> Path:
    tokenizer = _ctc_tokenizer(model_dir)
    width = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    decoder = build_lm_decoder(tokenizer_labels(tokenizer, width), lm_dir, unigrams, alpha, beta)
    extractor = extractor_class.from_pretrained(model_dir)
    processor = processor_class(feature_extractor=extractor, tokenizer=tokenizer, decoder=decoder)
    # Saved beside, then moved in, so a failure leaves the folder as it was; pyctcdecode's
    # save_to_dir also refuses an existing language_model/. The dot keeps it out of pyctcdecode's listing.
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".export-lm-") as tmp:
        processor.save_pretrained(tmp)
        _mark_processor_class(Path(tmp) / "processor_config.json", type(processor).__name__)
        for entry in sorted(os.listdir(tmp)):
            replace_path(Path(tmp) / entry, model_dir / entry)
    return model_dir / "language_model"


def _ctc_tokenizer(model_dir: Path) -> Any:
    """The folder's Wav2Vec2CTCTokenizer from vocab.json with the special tokens its tokenizer files
    name; bos/eos only when they are in vocab.json (a tokenizer would append `<s>`/`</s>` otherwise:
    tokens without a column in the CTC head)."""
    from transformers import Wav2Vec2CTCTokenizer

    specials = Vocabulary.load(model_dir / "vocab.json").specials
    return Wav2Vec2CTCTokenizer(str(model_dir / "vocab.json"), **{**specials.tokenizer_names(),
                                                                  "bos_token": specials.bos, "eos_token": specials.eos})


def _mark_processor_class(path: Path, name: str) -> None:
    config = json.loads(path.read_text())
    config["processor_class"] = name
    if isinstance(config.get("feature_extractor"), dict):
        config["feature_extractor"]["processor_class"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
