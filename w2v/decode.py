"""CTC decoding: greedy (vectorised) and beam search with a KenLM model through pyctcdecode.

Public API, used by train.py and tools/evaluate.py (keep these signatures):

- `greedy_decode(logits, inverse_vocab, blank_id, lengths) -> list[str]`
- `labels_from_vocab(tokens) -> list[str]`: pyctcdecode labels in id order
- `build_lm_decoder(labels, lm_path, unigrams, alpha, beta)`: a pyctcdecode `BeamSearchDecoderCTC`
- `export_processor_with_lm(model_dir, lm_dir, alpha, beta)`: `Wav2Vec2ProcessorWithLM` into a model
  folder, so `transformers.pipeline("automatic-speech-recognition", model=folder)` decodes with the LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from w2v.text import PAD, UNK, WORD_DELIMITER

UNK_LABEL = "⁇"  # pyctcdecode needs a non-empty, unique label for [UNK]


def greedy_decode(logits: np.ndarray, inverse_vocab: dict[int, str], blank_id: int,
                  lengths: Sequence[int] | np.ndarray | None = None) -> list[str]:
    """Best path: argmax per frame, collapse repeats, drop blanks, `|` → space. logits [B, T, V]."""
    logits = np.asarray(logits)
    if logits.ndim == 2:
        logits = logits[None]
    ids = logits.argmax(-1)  # [B, T]
    batch, frames = ids.shape
    lengths = np.full(batch, frames) if lengths is None else np.asarray(lengths)
    valid = np.arange(frames)[None, :] < lengths[:, None]
    changed = np.ones_like(ids, dtype=bool)
    changed[:, 1:] = ids[:, 1:] != ids[:, :-1]  # first frame of each run
    keep = valid & changed & (ids != blank_id)
    table = np.array([inverse_vocab.get(i, "") for i in range(max(inverse_vocab) + 1)], dtype=object)
    table[[i for i, t in inverse_vocab.items() if t == WORD_DELIMITER]] = " "
    out = []
    for row, mask in zip(ids, keep, strict=True):
        out.append(" ".join("".join(table[row[mask]]).split()))
    return out


def labels_from_vocab(tokens: dict[str, int]) -> list[str]:
    """Labels in id order as pyctcdecode wants them: blank `[PAD]` → "", `|` → " ", `[UNK]` → ⁇."""
    mapping = {PAD: "", WORD_DELIMITER: " ", UNK: UNK_LABEL}
    ordered = sorted(tokens.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise ValueError("vocabulary ids must be 0..V-1")
    return [mapping.get(t, t) for t, _ in ordered]


def build_lm_decoder(labels: list[str], lm_path: str | None, unigrams: list[str] | None = None,
                     alpha: float = 0.5, beta: float = 1.0):
    """A pyctcdecode beam-search decoder; unigrams are passed explicitly (needed for binaries)."""
    from pyctcdecode import build_ctcdecoder

    return build_ctcdecoder(labels, kenlm_model_path=lm_path, unigrams=unigrams, alpha=alpha, beta=beta)


def export_processor_with_lm(model_dir: str | Path, lm_dir: str | Path, alpha: float = 0.5,
                             beta: float = 1.0) -> Path:
    """Save `Wav2Vec2ProcessorWithLM` into `model_dir` (`language_model/`: attrs.json, unigrams.txt, model)."""
    from transformers import Wav2Vec2Processor, Wav2Vec2ProcessorWithLM

    model_dir, lm_dir = Path(model_dir), Path(lm_dir)
    processor = Wav2Vec2Processor.from_pretrained(model_dir)
    files = sorted(lm_dir.glob("*.bin")) or sorted(lm_dir.glob("*.arpa"))
    if not files:
        raise FileNotFoundError(f"{lm_dir}: no .bin or .arpa language model")
    unigram_file = lm_dir / "unigrams.txt"
    unigrams = unigram_file.read_text(encoding="utf-8").split() if unigram_file.is_file() else None
    vocab = processor.tokenizer.get_vocab()
    decoder = build_lm_decoder(labels_from_vocab(vocab), str(files[0]), unigrams, alpha, beta)
    with_lm = Wav2Vec2ProcessorWithLM(feature_extractor=processor.feature_extractor,
                                      tokenizer=processor.tokenizer, decoder=decoder)
    with_lm.save_pretrained(model_dir)
    return model_dir / "language_model"
