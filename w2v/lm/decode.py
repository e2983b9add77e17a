"""CTC decoding: greedy (vectorised numpy) and beam search with an n-gram LM (our own, compiled).

Public API, used by train.py, w2v-evaluate and w2v-transcribe (keep these signatures):

- `greedy_decode(logits, inverse_vocab, blank_id, lengths) -> list[str]`
- `labels_from_vocab(tokens, size=None) -> list[str]`: decoder labels in id order
- `BeamDecoder`: one decoder (one LM load) for many utterances, a batch on `processes` threads, and
  new alpha/beta without reloading the LM (a grid search). The search is w2v/lm/beam.py, the LM
  w2v/lm/ngram.py (an ARPA file read into a cached format of our own): neither needs kenlm.
- `export_processor_with_lm(model_dir, lm_dir, alpha, beta)`: `Wav2Vec2ProcessorWithLM` into a model
  folder, so `transformers.pipeline("automatic-speech-recognition", model=folder)` decodes with the
  LM. That class decodes with pyctcdecode and kenlm: the optional extra `w2v[pipeline-lm]`.

Labels are one per logit column, in id order: the CTC blank `[PAD]` as "", the word delimiter `|` as
" ", `[UNK]` as "⁇" (pyctcdecode's own unknown symbol: one character, unique). Tokens a tokenizer
appends after the model's vocabulary (Wav2Vec2CTCTokenizer adds `<s>` and `</s>`; the CTC head has
no column for them) are cut off with `size`, so the labels match the logits' width.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from w2v.atomic import replace_path
from w2v.lm.beam import beam_search, build_word_trie
from w2v.lm.ngram import NgramModel
from w2v.text import PAD, UNK, WORD_DELIMITER, Vocabulary

UNK_LABEL = "⁇"  # pyctcdecode.alphabet.UNK_TOKEN: exported folders keep pyctcdecode's labels
ARPA_SUFFIXES = (".arpa", ".arpa.gz")
BINARY_SUFFIXES = (".bin", ".binary")
UNIGRAMS_FILE = "unigrams.txt"  # written beside the LM by w2v-build-lm
MIN_PROB = 1e-15  # pyctcdecode's MIN_TOKEN_CLIP_P


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
    """The ARPA to decode with: ``lm`` itself, or a folder's one ARPA (``.arpa`` or ``.arpa.gz``).

    The decoder reads ARPA files (into its own cached format, w2v/lm/ngram.py); a KenLM binary is
    refused with a pointer to the ARPA it was built from, which w2v-build-lm keeps beside it. A
    folder with two different LMs (``3gram.arpa`` beside ``4gram.arpa``) is refused: which one was
    meant cannot be told."""
    path = Path(lm)
    if path.is_file():
        if path.suffix in BINARY_SUFFIXES:
            beside = path.with_suffix(".arpa")
            if beside.is_file():  # w2v-build-lm's layout: the ARPA the binary was built from
                return beside
            raise ValueError(f"{path} is a KenLM binary: w2v decodes from the ARPA it was built from "
                             "(w2v-build-lm keeps it beside the binary); pass that")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such LM file or folder")
    arpas = sorted(p for suffix in ARPA_SUFFIXES for p in path.glob(f"*{suffix}"))
    if len(arpas) > 1:
        raise ValueError(f"{path} holds more than one LM ({', '.join(p.name for p in arpas)}): pass the file")
    if arpas:
        return arpas[0]
    binaries = sorted(p for suffix in BINARY_SUFFIXES for p in path.glob(f"*{suffix}"))
    if binaries:
        raise ValueError(f"{path} holds only a KenLM binary ({binaries[0].name}): w2v decodes from the ARPA it "
                         "was built from; put that beside it")
    raise FileNotFoundError(f"no ARPA language model ({', '.join(ARPA_SUFFIXES)}) in {path}")


def load_unigrams(lm_file: str | os.PathLike) -> list[str] | None:
    """The known words from unigrams.txt beside the LM (w2v-build-lm writes it), or None: then every
    word of the ARPA but <s>, </s> and <unk> is known."""
    listed = Path(lm_file).with_name(UNIGRAMS_FILE)
    return listed.read_text(encoding="utf-8").split() if listed.is_file() else None


class BeamDecoder:
    """Beam search over many utterances with one LM load: threads decode a batch, new weights need no reload.

        with BeamDecoder(labels, "runs/lm", alpha=0.5, beta=1.0, processes=4) as decoder:
            texts = decoder.decode_batch(log_probs)          # a list of [T_i, V], or [B, T, V] + lengths
            decoder.set_weights(0.8, 2.0)                    # next grid point, same LM

    The search is pyctcdecode's (w2v/lm/beam.py), compiled; `processes` threads share the LM.
    """

    def __init__(self, labels: Sequence[str], lm: str | os.PathLike | None = None,
                 unigrams: Sequence[str] | None = None, alpha: float = 0.5, beta: float = 1.0,
                 beam_width: int = 100, processes: int = 1, *, beam_prune_logp: float = -10.0,
                 token_min_logp: float = -5.0, unk_score_offset: float = -10.0, prune_history: bool = True,
                 empty_last_word: bool = False):
        self.labels = list(labels)
        if "" not in self.labels:
            raise ValueError("no CTC blank among the labels (the empty label)")
        self.blank = self.labels.index("")
        self.space = self.labels.index(" ") if " " in self.labels else -1
        self.lm_file = find_lm_file(lm) if lm is not None else None
        self.lm = NgramModel.load(self.lm_file) if self.lm_file is not None else None
        if self.lm is not None and unigrams is None:
            unigrams = load_unigrams(self.lm_file)
        self.trie, self.known = self._word_trie(unigrams)
        self._model = self._model_arrays()  # what the search reads of the LM: the same for every utterance
        self.alpha, self.beta = float(alpha), float(beta)
        self.beam_width, self.processes = beam_width, max(1, processes)
        self.beam_prune_logp, self.token_min_logp = float(beam_prune_logp), float(token_min_logp)
        self.unk_score_offset = float(unk_score_offset)
        self.empty_last_word = empty_last_word  # pyctcdecode's end rule (w2v/lm/beam.py): for comparisons
        self.prune_history = prune_history  # as pyctcdecode's decode(): one beam per LM history
        self._threads: ThreadPoolExecutor | None = None
        # numba compiles the search on a machine's first run (seconds) and loads it from its cache
        # after that: done here, so that the first utterance is not the one that pays, and timed
        start = time.perf_counter()
        self._search(np.zeros((1, len(self.labels)), np.float32))
        self.ready_seconds = time.perf_counter() - start

    def ready_note(self, threshold: float = 3.0) -> str | None:
        """A line for the user when getting the search ready was slow (its first compilation)."""
        if self.ready_seconds < threshold:
            return None
        return (f"beam search ready in {self.ready_seconds:.1f} s (numba compiles it on a machine's first run "
                "and caches it)")

    def _word_trie(self, unigrams: Sequence[str] | None) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """The LM's words spelled in label ids, and which words are known (all, or those in `unigrams`)."""
        if self.lm is None:
            empty = np.full(1, -1, np.int32)
            return (empty, empty, empty, empty, np.zeros(1, np.bool_)), np.zeros(1, np.bool_)
        lm = self.lm
        usable = np.ones(lm.vocab_size, np.bool_)
        for special in (lm.unk, lm.bos, lm.eos):
            if special >= 0:
                usable[special] = False
        if unigrams is None:
            known = usable.copy()
        else:
            known = np.zeros(lm.vocab_size, np.bool_)
            ids = np.array([lm.word_id(w) for w in unigrams], dtype=np.int64)
            known[ids[ids >= 0]] = True
            known &= usable
        single = sorted((ord(label), i) for i, label in enumerate(self.labels) if len(label) == 1 and label != " ")
        label_cps = np.array([cp for cp, _ in single], dtype=np.int32)
        label_ids = np.array([i for _, i in single], dtype=np.int32)
        return build_word_trie(lm.chars, lm.char_offsets, label_cps, label_ids, usable, known), known

    def _model_arrays(self) -> tuple:
        """The LM's arrays, order, special words and start state, as `beam_search` takes them."""
        lm = self.lm
        if lm is None:
            return (*_NO_LM, 1, -1, -1, np.zeros(1, np.int32), np.zeros(1, np.float32), 0)
        words, backoffs, length = lm.start_state()
        return (lm.prob, lm.backoff, lm.word, lm.child, lm.order, lm.unk, lm.eos, words, backoffs, length)

    def describe(self) -> str:
        """Which LM it decodes with: the file, its order and size (or that there is none)."""
        if self.lm is None:
            return "no LM (beam search over the acoustic model alone)"
        counts = ", ".join(f"{n:,}" for n in self.lm.counts)
        return f"{self.lm_file} ({self.lm.order}-gram, {counts} n-grams, {self.lm.nbytes() / 1e6:.1f} MB)"

    def set_weights(self, alpha: float, beta: float) -> None:
        """New LM weight and word bonus; the LM and the word tree stay."""
        self.alpha, self.beta = float(alpha), float(beta)

    def decode(self, logits: np.ndarray) -> str:
        """One utterance, logits [T, V]: raw, log-probs or probabilities (as pyctcdecode accepts them)."""
        return self.decode_words(logits)[0]

    def decode_words(self, logits: np.ndarray) -> tuple[str, list[tuple[str, tuple[int, int]]]]:
        """The best text and its words with their first and end frames (end exclusive)."""
        labels, starts, ends, _ = self._search(logits)
        text = " ".join("".join(self.labels[i] if i >= 0 else " " for i in labels).split())
        return text, list(zip(text.split(), zip(starts.tolist(), ends.tolist(), strict=True), strict=False))

    def prepare(self, logits: np.ndarray | Sequence[np.ndarray],
                lengths: Sequence[int] | np.ndarray | None = None) -> Posteriors:
        """The utterances as the search reads them (normalised log-probabilities), for decoding them
        again at other weights without redoing that: what a grid search reuses."""
        return Posteriors(_log_probs(x, len(self.labels)) for x in _unpad(logits, lengths))

    def decode_batch(self, logits: np.ndarray | Sequence[np.ndarray] | Posteriors,
                     lengths: Sequence[int] | np.ndarray | None = None) -> list[str]:
        """A padded [B, T, V] array with valid frames per row, a list of [T_i, V] arrays, or `prepare`'s."""
        items = self.prepare(logits, lengths) if not isinstance(logits, Posteriors) else logits
        if self.processes == 1 or len(items) < 2:
            return [self.decode(x) for x in items]
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.processes, thread_name_prefix="w2v-beam")
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))  # longest first: no straggler at the end
        texts = dict(zip(order, self._threads.map(self.decode, [items[i] for i in order]), strict=True))
        return [texts[i] for i in range(len(items))]

    def _search(self, logits: np.ndarray):
        logp = logits if isinstance(logits, PreparedArray) else _log_probs(np.asarray(logits), len(self.labels))
        return beam_search(logp, self.blank, self.space, self.beam_width, self.beam_prune_logp, self.token_min_logp,
                           self.alpha, self.beta, self.unk_score_offset, self.lm is not None, self.empty_last_word,
                           self.prune_history, *self.trie, self.known, *self._model)

    def close(self) -> None:
        """Stop the threads."""
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def __enter__(self) -> BeamDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PreparedArray(np.ndarray):
    """One utterance's log-probabilities as the search reads them (`BeamDecoder.prepare`)."""


class Posteriors(list):
    """Utterances prepared by `BeamDecoder.prepare`: `decode_batch` decodes them as they are."""


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# Stand-ins for the LM's arrays when there is none: read-only like the memory-mapped ones, so numba
# compiles the search once for both (a second signature would cost a second compilation).
_NO_LM = (_read_only(np.zeros(1, np.float32)), _read_only(np.zeros(1, np.float32)),
          _read_only(np.zeros(1, np.uint16)), _read_only(np.zeros(1, np.int32)))


def _log_probs(logits: np.ndarray, width: int) -> np.ndarray:
    """Log-probabilities [T, V] as pyctcdecode makes them: probabilities are logged, anything else goes
    through a log-softmax; both clipped at log(1e-15)."""
    if logits.ndim != 2 or logits.shape[1] != width:
        raise ValueError(f"expected logits [T, {width}] (one column per label), got shape {logits.shape}")
    x = logits.astype(np.float64)
    if len(x) and np.isclose(x.sum(axis=1).mean(), 1.0):
        out = np.log(np.clip(x, MIN_PROB, 1.0))
    else:
        top = x.max(axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0.0
        with np.errstate(divide="ignore"):
            out = x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))
        out = np.clip(out, np.log(MIN_PROB), 0.0)
    return np.ascontiguousarray(out, dtype=np.float32).view(PreparedArray)


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

    ``lm_dir``: a w2v-build-lm folder or an ARPA file. Afterwards the folder holds alphabet.json and
    language_model/ with exactly attrs.json, unigrams.txt and the ARPA (a copy: pipeline() loads it
    with kenlm, w2v-transcribe with our decoder), and rewritten processor files; returns the
    language_model/ path. Two transformers 5
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


PIPELINE_LM_MISSING = ("pipeline() decodes an LM with pyctcdecode and kenlm, which are not installed: "
                      "pip install 'w2v[pipeline-lm]' (pyctcdecode's metadata pins numpy<2; `pip install --no-deps "
                      "pyctcdecode pygtrie kenlm` keeps numpy 2 and works)")


def pipeline_lm_available() -> bool:
    """Whether pyctcdecode and kenlm import (what Wav2Vec2ProcessorWithLM decodes with)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("pyctcdecode", "kenlm", "pygtrie"))


def _pyctcdecode_decoder(labels: Sequence[str], lm_file: Path, unigrams: Sequence[str] | None, alpha: float,
                         beta: float) -> Any:
    import logging

    from pyctcdecode import build_ctcdecoder

    # "Only N unigrams passed as vocabulary. Is this small or artificial data?": nothing to act on
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    return build_ctcdecoder(list(labels), str(lm_file), unigrams=unigrams, alpha=float(alpha), beta=float(beta))


def _save_with_lm(model_dir: Path, lm_dir, alpha: float, beta: float, unigrams, extractor_class,
                  processor_class) -> Path:
    if not pipeline_lm_available():
        raise RuntimeError(PIPELINE_LM_MISSING)
    tokenizer = _ctc_tokenizer(model_dir)
    width = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    lm_file = find_lm_file(lm_dir)
    if unigrams is None:
        unigrams = load_unigrams(lm_file)
    decoder = _pyctcdecode_decoder(tokenizer_labels(tokenizer, width), lm_file, unigrams, alpha, beta)
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
