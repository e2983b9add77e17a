"""Scoring a CTC model: one acoustic pass, CTC loss sums, greedy WER/CER, unknown characters.

Training's evaluation, `w2v-evaluate` and `w2v-transcribe` all run the model through
`log_probs` (logits under the caller's autocast, log-softmax in fp32), and the two that score
shards read them with the same loader rule (`evaluation_loader`: every utterance of the index, in
index order, one longer than the cap batched alone) and the same default cap: for a group-norm
model (no attention mask) the padding of a batch changes what it computes, so the same batches
are what makes training's figures and `w2v-evaluate`'s the same.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from w2v.data.loader import LoaderConfig, SpeechLoader
from w2v.data.padding import pad_labels
from w2v.lm.decode import greedy_decode
from w2v.metrics import ErrorCounts
from w2v.text import Vocabulary

# Padded seconds per evaluation batch, training's evaluation and w2v-evaluate alike.
EVAL_BATCH_SECONDS = 200.0


def evaluation_loader(shards, max_batch_seconds: float, attention_mask: bool, *, num_workers: int = 0,
                      rank: int = 0, world_size: int = 1, index: str | None = None, **settings) -> SpeechLoader:
    """Every utterance of the shards, for scoring (LoaderConfig.evaluation): no labels, so no
    label-based filters; references are normalised from the texts."""
    cfg = LoaderConfig.evaluation(max_batch_seconds, attention_mask, num_workers, **settings)
    return SpeechLoader(shards, cfg, rank=rank, world_size=world_size, index=index)


def log_softmax_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in fp32, outside any autocast (fp16 log-softmax and CTC overflow)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.log_softmax(logits.float(), dim=-1)


def log_probs(model: torch.nn.Module, values: torch.Tensor, mask: torch.Tensor | None,
              autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """The acoustic model's log-probabilities [B, T, V] (fp32) for a batch. `model` returns
    logits (`w2v.model.CTCModel`, possibly wrapped by DDP)."""
    with autocast():
        logits = model(values, attention_mask=mask)
    return log_softmax_fp32(logits)


def ctc_sum(log_probs: torch.Tensor, labels: torch.Tensor, frames: torch.Tensor, blank: int) -> torch.Tensor:
    """CTC loss summed over a batch, in fp32: `log_probs` [B, T, V], labels padded with -100,
    `frames` the true output lengths; an impossible alignment counts zero."""
    with torch.autocast(device_type=log_probs.device.type, enabled=False):
        return F.ctc_loss(log_probs.transpose(0, 1), labels[labels >= 0], frames, (labels >= 0).sum(-1),
                          blank=blank, reduction="sum", zero_infinity=True)


@dataclass
class Scored:
    """One batch through the acoustic model: the batch (keys, texts, audio seconds), its
    log-probabilities [B, T, V], each utterance's output frames, and the forward's seconds."""

    batch: dict
    log_probs: torch.Tensor
    frames: torch.Tensor
    seconds: float


def acoustic_pass(model: torch.nn.Module, batches: Iterable[dict], device: torch.device | str = "cpu",
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  in_step: bool = False) -> Iterator[Scored]:
    """The model over the loader's batches, without gradients; an `empty` batch (a stand-in that
    keeps ranks in step) has nothing to score and is passed over, or with `in_step` run and
    dropped (a sharded model's forward is a collective: every rank must run as many)."""
    core = getattr(model, "module", model)  # DDP keeps the model it wraps as .module
    with torch.no_grad():
        for batch in batches:
            if batch["empty"]:
                if in_step:
                    log_probs(model, batch["input_values"].to(device), None, autocast)
                continue
            start = time.perf_counter()
            mask = batch["attention_mask"].to(device) if "attention_mask" in batch else None
            out = log_probs(model, batch["input_values"].to(device), mask, autocast)
            frames = core.output_lengths(batch["input_lengths"].to(device))
            yield Scored(batch, out, frames, time.perf_counter() - start)


@dataclass
class GreedyScores:
    """One rank's share of a greedy evaluation: error counts, the CTC loss summed with its label
    count, and a few (reference, hypothesis) pairs to show."""

    counts: ErrorCounts = field(default_factory=ErrorCounts)
    loss_sum: float = 0.0
    labels: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)


def greedy_scores(model: torch.nn.Module, loader: SpeechLoader, vocab: Vocabulary, device: torch.device | str = "cpu",
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  n_examples: int = 0, in_step: bool = False) -> GreedyScores:
    """Greedy WER/CER counts and the CTC loss of the loader's utterances (this rank's share)."""
    scores, inverse = GreedyScores(), vocab.decoding_table()
    loss = torch.zeros(2, dtype=torch.float64, device=device)  # CTC loss sum, labels
    for s in acoustic_pass(model, loader, device, autocast, in_step):
        hyps = greedy_decode(s.log_probs.cpu().numpy(), inverse, vocab.pad_id, s.frames.cpu().numpy())
        labels = torch.from_numpy(pad_labels([vocab.encode(t) for t in s.batch["texts"]])).to(device)
        loss += torch.stack([ctc_sum(s.log_probs, labels, s.frames, vocab.pad_id).double(),
                             (labels >= 0).sum().double()])
        refs = [vocab.normalizer(t) for t in s.batch["texts"]]
        scores.counts = scores.counts + ErrorCounts.of(refs, hyps)
        scores.examples += list(zip(refs, hyps, strict=True))[: max(0, n_examples - len(scores.examples))]
    scores.loss_sum, scores.labels = loss.tolist()[0], int(loss[1].item())
    return scores


def per_utterance_log_probs(scored: Scored) -> list[np.ndarray]:
    """A batch's log-probabilities as one [T_i, V] array per utterance (its padding cut off)."""
    rows = scored.log_probs.cpu().numpy()
    return [lp[:n] for lp, n in zip(rows, scored.frames.tolist(), strict=True)]


def unknown_characters(vocab: Vocabulary, texts: Iterable[str], which: str, consequence: str) -> str | None:
    """A line naming the characters of the `which` texts that the vocabulary lacks, most frequent
    first, and what becomes of them; None when there are none."""
    unknown = vocab.unknown_chars(list(texts))
    if not unknown:
        return None
    listed = ", ".join(f"{ch!r}×{n}" for ch, n in unknown.most_common(20))
    return f"characters of the {which} outside the vocabulary ({consequence}): {listed}"
