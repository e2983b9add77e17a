"""WER and CER of a trained model on shards (or a corpus): greedy, and with a KenLM language model.

    w2v-evaluate --model runs/x/final --shards shards/test
    w2v-evaluate --model runs/x/final --corpus cv-corpus/en/test.tsv          # any layout, not sharded
    w2v-evaluate --model runs/x/final --shards shards/dev --lm runs/lm --tune
    w2v-evaluate --model runs/x/final --shards shards/test --lm runs/lm --alpha 0.5 --beta 1.0 \
        --json test.json --errors test_errors.jsonl

Corpus-level WER/CER (jiwer edit counts summed over all utterances), the real-time factor of the
acoustic model and of each decoder, per-utterance errors as JSONL, the worst utterances printed.
`--tune` grid-searches alpha/beta on the given (dev) shards and reports the best point.
References are normalised with the normaliser saved beside the model (as in training).
`--device auto` (the default) runs the model on CUDA when torch sees a GPU, else on the CPU, in fp32
unless `--precision` says otherwise. With `--lm` (without `--tune`) the beam search of each batch
runs while the model computes the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2ForCTC

from w2v.flags import ArgumentParser
from w2v.lm.decode import BeamDecoder, find_lm_file, greedy_decode, labels_from_vocab, load_unigrams
from w2v.metrics import ErrorCounts
from w2v.model import CTCModel, wants_attention_mask
from w2v.progress import LOG_INTERVAL_SECONDS, Progress
from w2v.run_folder import load_for_inference
from w2v.scoring import (
    EVAL_BATCH_SECONDS,
    acoustic_pass,
    evaluation_loader,
    per_utterance_log_probs,
    unknown_characters,
)
from w2v.shards.audio import AudioError
from w2v.shards.corpus import FORMATS, Corpus, CorpusError, Utterance, open_corpus, parse_placeholders
from w2v.shards.sharding import MIN_DECODED_SECONDS
from w2v.shards.spec import SelectedShard, select_shards
from w2v.text import TextNormalizer, Vocabulary
from w2v.transcribe import (
    DEVICES,
    PRECISIONS,
    Source,
    Transcriber,
    forward_context,
    load_audio,
    resolve_device,
)

# Called with each batch's log-probabilities ([T_i, V] per utterance) as soon as they are computed.
OnBatch = Callable[[list[np.ndarray]], None]


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="w2v-evaluate", description=__doc__)
    p.add_argument("--model", required=True,
                   help="a model folder (train.py's OUTPUT_DIR/final or best) or a checkpoint (OUTPUT_DIR/checkpoints/step-N)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--shards", help="shard folder, pattern or URLs")
    what.add_argument("--corpus", help="or a corpus in any layout w2v-make-shards reads (audio and transcripts, "
                                       "not sharded): read, resampled and scored as they are")
    p.add_argument("--split", default=None, help="--corpus: the split, for a layout with several")
    p.add_argument("--format", default="auto", choices=[f for f in FORMATS if f != "audio"],
                   help="--corpus: its layout (default: detected)")
    p.add_argument("--audio-column", default=None, help="--corpus: the column that names the audio")
    p.add_argument("--text-column", default=None, help="--corpus: the column of the transcripts")
    p.add_argument("--placeholder", action="append", default=None, metavar="NAME=VALUE",
                   help="--corpus, SpeechBrain: the value of $NAME in its fields; repeatable")
    p.add_argument("--index", default=None, help="index.json for pipe:/URL shards")
    p.add_argument("--lm", default=None, help="a folder from w2v-build-lm (or its .arpa file)")
    p.add_argument("--alpha", type=float, default=0.5, help="LM weight")
    p.add_argument("--beta", type=float, default=1.0, help="word insertion bonus")
    p.add_argument("--beam-width", type=int, default=64)
    p.add_argument("--tune", action="store_true", help="grid-search alpha and beta on these shards")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--max-batch-seconds", type=float, default=EVAL_BATCH_SECONDS,
                   help="padded audio per forward pass (training's evaluation uses the same default)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    p.add_argument("--adapter-lang", "--adapter_lang", default=None, metavar="CODE",
                   help="an MMS model: use this language's adapters and head (adapter.CODE.safetensors)")
    p.add_argument("--device", default="auto", help=f"where the model runs: {DEVICES} (default: auto, "
                                                    "CUDA when torch sees a GPU, else the CPU)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="the forward's precision (default fp32: the CPU's figures, up to rounding); bf16 or fp16 "
                        "run it under autocast")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--errors", default=None, help="per-utterance errors (JSONL)")
    p.add_argument("--worst", type=int, default=5, help="print the N worst utterances")
    p.add_argument("--log-interval-seconds", "--log_interval_seconds", type=float, default=LOG_INTERVAL_SECONDS,
                   help="when stderr is not a terminal: a progress line at most this often")
    return p.parse_args(argv)


def acoustic_outputs(model: Wav2Vec2ForCTC, shards, max_batch_seconds: float,
                     log_interval: float = LOG_INTERVAL_SECONDS, *, device: str | torch.device = "cpu",
                     precision: str = "fp32", on_batch: OnBatch | None = None):
    """Log-probabilities per utterance ([T_i, V] float32), keys, texts, audio seconds, model seconds,
    the number of utterances the index lists, and what could not be scored by reason: every
    utterance of the index is scored (w2v.scoring's rule, as in training's evaluation), except
    what damaged data makes unreadable. The model runs on `device` (where it already is);
    `on_batch` gets each batch's log-probabilities as soon as they are computed."""
    device = torch.device(device)
    loader = evaluation_loader(shards, max_batch_seconds, wants_attention_mask(model.config),
                               pin_memory=device.type == "cuda")  # page-locked batches: faster copies to the GPU
    outputs, keys, texts, audio, compute = [], [], [], 0.0, 0.0
    batches = Progress(loader, desc="acoustic model", unit="batch", interval=log_interval)
    for scored in acoustic_pass(CTCModel(model), batches, device, forward_context(device, precision)):
        start = time.perf_counter()
        batch_log_probs = per_utterance_log_probs(scored)  # on a GPU, .cpu() waits for the forward: timed
        compute += scored.seconds + time.perf_counter() - start
        if on_batch is not None:
            on_batch(batch_log_probs)
        outputs += batch_log_probs
        keys += scored.batch["keys"]
        texts += scored.batch["texts"]
        audio += scored.batch["audio_seconds"]
    return outputs, keys, texts, audio, compute, len(loader.table), loader.diagnostics()["drops"]


def corpus_outputs(model: Wav2Vec2ForCTC, vocab: Vocabulary, corpus: Corpus, max_batch_seconds: float,
                   log_interval: float = LOG_INTERVAL_SECONDS, *, device: str | torch.device = "cpu",
                   precision: str = "fp32", on_batch: OnBatch | None = None):
    """As acoustic_outputs, for a corpus read as w2v-make-shards and w2v-transcribe read it: each
    input decoded, resampled to 16 kHz and passed through the model (long ones in chunks); an
    input that cannot be scored is counted by its reason. `on_batch` gets each group of 64 inputs."""
    transcriber = Transcriber(model, vocab, device=device, batch_seconds=max_batch_seconds, precision=precision)
    outputs, keys, texts, seconds, excluded = [], [], [], [0.0, 0.0], Counter()  # seconds: audio, model
    group: list[Utterance] = []

    def flush() -> None:
        waves, order = {}, []
        for utt in group:
            try:
                wave = load_audio(Source(utt.source, utt), transcriber.recording)
            except AudioError as exc:
                excluded[exc.reason] += 1
                continue
            if len(wave) < MIN_DECODED_SECONDS * 16000:  # as at sharding: a truncated file, not speech
                excluded["too_short"] += 1
                continue
            waves[utt.key] = wave
            order.append(utt)
        start = time.perf_counter()
        log_probs = transcriber.log_probs_of(waves)
        seconds[1] += time.perf_counter() - start
        seconds[0] += sum(len(w) for w in waves.values()) / 16000
        group_log_probs = [log_probs[utt.key] for utt in order]  # keys are unique in a corpus (Keys)
        if on_batch is not None and group_log_probs:
            on_batch(group_log_probs)
        outputs.extend(group_log_probs)
        keys.extend(utt.key for utt in order)
        texts.extend(utt.text for utt in order)
        group.clear()

    for utt in Progress(corpus.utterances(), total=corpus.count(), desc="acoustic model", unit="utt",
                        interval=log_interval):
        if utt.problem:
            excluded[utt.problem] += 1
            continue
        group.append(utt)
        if len(group) == 64:
            flush()
    flush()
    return outputs, keys, texts, seconds[0], seconds[1], corpus.count(), dict(excluded)


def score(refs: list[str], hyps: list[str]) -> dict:
    counts = ErrorCounts.of(refs, hyps)
    return {"wer": counts.wer, "cer": counts.cer, "words": counts.words, "word_edits": counts.word_edits}


class OverlappedDecoding:
    """LM decoding of each batch while the acoustic model computes the next one.

    One thread of its own takes the batches in the order they were computed and decodes each with
    `decoder.decode_batch` (on the decoder's threads). The compiled beam search releases the GIL
    (numba nogil), and so does torch's forward, so both run at once. Each utterance is decoded on
    its own, as one decode_batch over the whole set would decode it, and the batches come back in
    the order they went in: the hypotheses are those of decoding one batch after another. The
    queue is not bounded: what waits in it is log-probabilities the evaluation keeps anyway."""

    def __init__(self, decoder: BeamDecoder):
        self.decoder = decoder
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="w2v-lm")
        self.batches: list[Future] = []

    def submit(self, log_probs: list[np.ndarray]) -> None:
        """Queue one batch's log-probabilities ([T_i, V] per utterance) for decoding."""
        self.batches.append(self.thread.submit(self._decode, log_probs))

    def _decode(self, log_probs: list[np.ndarray]) -> tuple[list[str], float]:
        start = time.perf_counter()
        hyps = self.decoder.decode_batch(log_probs)
        return hyps, time.perf_counter() - start

    def results(self) -> tuple[list[str], float]:
        """Every hypothesis in utterance order (waiting for the batches still decoding), and the
        seconds spent decoding, summed over the batches (what the LM's real-time factor reports)."""
        hyps, seconds = [], 0.0
        for batch in self.batches:
            batch_hyps, batch_seconds = batch.result()  # a decoding error is raised here
            hyps += batch_hyps
            seconds += batch_seconds
        return hyps, seconds

    def close(self) -> None:
        self.thread.shutdown(cancel_futures=True)

    def __enter__(self) -> OverlappedDecoding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_decoder(args: argparse.Namespace, vocab: Vocabulary, width: int, lm_file: Path) -> BeamDecoder:
    """One decoder, one LM load and one word tree for the whole set (and grid); each batch on all
    cores' threads. Made before the acoustic pass, so that decoding can overlap it."""
    labels = labels_from_vocab(vocab.tokens, size=width, pad=vocab.specials.pad, unk=vocab.specials.unk,
                               delimiter=vocab.specials.delimiter)
    alpha, beta = (args.alphas[0], args.betas[0]) if args.tune else (args.alpha, args.beta)
    decoder = BeamDecoder(labels, lm_file, load_unigrams(lm_file), alpha, beta, args.beam_width,
                          processes=args.workers or os.cpu_count() or 1)
    print(f"LM: {decoder.describe()}")
    if note := decoder.ready_note():
        print(note, file=sys.stderr)
    return decoder


def tuned_lm(decoder: BeamDecoder, log_probs: list[np.ndarray], refs: list[str], args: argparse.Namespace
             ) -> tuple[dict, list[str], float, list[dict]]:
    """The grid search: the best point's figures, hypotheses and decoding seconds, and every point."""
    points = [(a, b) for a in args.alphas for b in args.betas]
    best, grid = None, []
    prepared = decoder.prepare(log_probs)  # normalised once for the whole grid
    for alpha, beta in Progress(points, desc="LM decoding (alpha, beta)", disable=len(points) == 1,
                                interval=args.log_interval_seconds):
        decoder.set_weights(alpha, beta)
        start = time.perf_counter()
        hyps = decoder.decode_batch(prepared)
        seconds = time.perf_counter() - start
        figures = {**score(refs, hyps), "alpha": alpha, "beta": beta}
        grid.append(figures)
        if best is None or (figures["wer"], figures["cer"]) < (best[0]["wer"], best[0]["cer"]):
            best = (figures, hyps, seconds)
    return (*best, grid)


class UsageError(Exception):
    """An argument that cannot be used: one `error:` line on stderr and exit status 2."""


@dataclass
class Loaded:
    """What the arguments name, checked and loaded: the device, the shards or corpus, the model
    (on the device), its vocabulary and the LM file."""

    device: torch.device
    shards: list[SelectedShard] | None
    corpus: Corpus | None
    model: Wav2Vec2ForCTC
    vocab: Vocabulary
    lm_file: Path | None


def check_and_load(args: argparse.Namespace) -> Loaded:
    """Every argument checked before the slow work that needs it (a UsageError otherwise): the
    device first, then the data's paths, the model, the LM."""
    try:  # a device this machine lacks costs no model load and no reading of shards
        device = resolve_device(args.device)
        forward_context(device, args.precision)  # a ValueError when the device cannot run that precision
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:  # every path is checked before the model loads
        shards = select_shards(args.shards, args.index) if args.shards else None
        corpus = open_corpus(args.corpus, args.format, args.split, args.audio_column, args.text_column,
                             parse_placeholders(args.placeholder)) if args.corpus else None
    except (ValueError, CorpusError) as exc:
        raise UsageError(f"{'--shards ' + args.shards if args.shards else '--corpus ' + args.corpus}: {exc}") from None
    try:  # a model folder, or a train.py checkpoint (checkpoints/step-N)
        model, model_dir = load_for_inference(args.model, args.adapter_lang)
        vocab = Vocabulary.load(model_dir / "vocab.json", TextNormalizer.load(model_dir), args.adapter_lang)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    vocab.normalizer = vocab.normalizer.for_vocabulary(vocab)  # a hub checkpoint's upper-case letters
    try:  # before the acoustic pass: a wrong --lm should not cost a pass over the whole set
        lm_file = find_lm_file(args.lm) if args.lm else None
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--lm {args.lm}: {exc}") from None
    return Loaded(device, shards, corpus, model.to(device), vocab, lm_file)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        loaded = check_and_load(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result, rows = evaluate(args, loaded)
    print_report(result, args.tune)
    if args.errors:
        Path(args.errors).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    worst_first = sorted(rows, key=lambda r: (-(r["wer"] if r["wer"] is not None else float("inf")), -r["word_edits"]))
    for r in worst_first[: args.worst]:
        wer = f"WER {100 * r['wer']:.0f}%" if r["wer"] is not None else f"empty reference, {r['word_edits']} insertions"
        print(f"  {r['key']}  {wer}\n    ref: {r['ref']}\n    hyp: {r['hyp']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def model_outputs(args: argparse.Namespace, loaded: Loaded, on_batch: OnBatch | None):
    """acoustic_outputs of the shards, or corpus_outputs of the corpus."""
    options = {"device": loaded.device, "precision": args.precision, "on_batch": on_batch}
    if loaded.corpus is not None:
        return corpus_outputs(loaded.model, loaded.vocab, loaded.corpus, args.max_batch_seconds,
                              args.log_interval_seconds, **options)
    return acoustic_outputs(loaded.model, loaded.shards, args.max_batch_seconds, args.log_interval_seconds, **options)


def evaluate(args: argparse.Namespace, loaded: Loaded) -> tuple[dict, list[dict]]:
    """The figures and the per-utterance rows: the acoustic pass, greedy decoding, and with an LM
    its decoding (overlapping the acoustic pass at one alpha/beta; the grid after it)."""
    vocab = loaded.vocab
    with contextlib.ExitStack() as closing:
        decoder = (closing.enter_context(open_decoder(args, vocab, loaded.model.config.vocab_size, loaded.lm_file))
                   if loaded.lm_file is not None else None)
        # one alpha/beta: each batch is decoded as soon as the model has computed it; a grid search
        # needs every utterance first
        overlapped = closing.enter_context(OverlappedDecoding(decoder)) if decoder and not args.tune else None
        log_probs, keys, texts, audio, compute, listed, excluded = model_outputs(
            args, loaded, overlapped.submit if overlapped is not None else None)
        refs = [vocab.normalizer(t) for t in texts]
        unknown = unknown_characters(vocab, texts, "references", "the model cannot emit them: each is an error")
        if unknown:
            print(unknown)
        inverse = vocab.decoding_table()
        start = time.perf_counter()
        greedy = [greedy_decode(lp, inverse, vocab.pad_id)[0] for lp in log_probs]
        greedy_seconds = time.perf_counter() - start
        result = {"utterances": len(refs), "index_utterances": listed, "excluded": excluded,
                  "empty_references": sum(1 for r in refs if not r), "audio_seconds": audio,
                  "greedy": score(refs, greedy),
                  "real_time_factor": {"acoustic_model": compute / max(audio, 1e-9),
                                       "greedy": greedy_seconds / max(audio, 1e-9)}}
        lm_hyps = None
        if overlapped is not None:
            lm_hyps, seconds = overlapped.results()
            figures, grid = {**score(refs, lm_hyps), "alpha": args.alpha, "beta": args.beta}, None
        elif decoder is not None:
            figures, lm_hyps, seconds, grid = tuned_lm(decoder, log_probs, refs, args)
    if lm_hyps is not None:
        result["lm"] = {**figures, "lm": str(loaded.lm_file), "beam_width": args.beam_width}
        result["real_time_factor"]["lm"] = seconds / max(audio, 1e-9)
        if grid is not None:
            result["grid"] = grid
    return result, per_utterance(keys, refs, greedy, lm_hyps)


def per_utterance(keys, refs, greedy, lm_hyps) -> list[dict]:
    rows = []
    for i, (key, ref, hyp) in enumerate(zip(keys, refs, greedy, strict=True)):
        best = lm_hyps[i] if lm_hyps is not None else hyp
        counts = ErrorCounts.of([ref], [best])
        empty = counts.empty_references == 1  # WER/CER undefined: its words are insertions
        rows.append({"key": key, "ref": ref, "hyp": best, "greedy": hyp, "wer": None if empty else counts.wer,
                     "cer": None if empty else counts.cer, "word_edits": counts.word_edits, "words": counts.words,
                     "empty_reference": empty})
    return rows


def print_grid(grid: list[dict]) -> None:
    """WER per alpha (rows) and beta (columns), and a warning when the best point is on the grid's
    edge: the best may lie beyond it."""
    alphas, betas = sorted({p["alpha"] for p in grid}), sorted({p["beta"] for p in grid})
    wer = {(p["alpha"], p["beta"]): p["wer"] for p in grid}
    print("\nWER by alpha (rows) and beta (columns):")
    print(f"{'':>8}" + "".join(f"{'b=' + format(b, 'g'):>9}" for b in betas))
    for a in alphas:
        print(f"{'a=' + format(a, 'g'):>8}" + "".join(f"{100 * wer[(a, b)]:8.2f}%" if (a, b) in wer else f"{'':>9}"
                                                   for b in betas))
    best = min(grid, key=lambda p: (p["wer"], p["cer"]))
    edges = []
    for name, values in (("alpha", alphas), ("beta", betas)):
        if len(values) > 1 and best[name] in (values[0], values[-1]):
            side = "smallest" if best[name] == values[0] else "largest"
            edges.append(f"{name} {best[name]:g} is the {side} of --{name}s")
    if edges:
        print(f"warning: the best point is on the grid's edge ({'; '.join(edges)}): widen the grid there, "
              "the best may lie beyond it", file=sys.stderr)


def print_report(result: dict, tuned: bool) -> None:
    if tuned and "grid" in result:
        print_grid(result["grid"])
    print(f"\n{result['utterances']} of the index's {result['index_utterances']} utterances scored, "
          f"{result['audio_seconds'] / 60:.1f} min of audio; not scored: {result['excluded'] or 'none'}; "
          f"empty references (their words count as insertions): {result['empty_references']}")
    print(f"{'decoding':28} {'WER':>7} {'CER':>7}")
    g = result["greedy"]
    print(f"{'greedy':28} {100 * g['wer']:6.2f}% {100 * g['cer']:6.2f}%")
    if "lm" in result:
        lm = result["lm"]
        name = f"LM a={lm['alpha']:g} b={lm['beta']:g}" + (" (tuned)" if tuned else "")
        print(f"{name:28} {100 * lm['wer']:6.2f}% {100 * lm['cer']:6.2f}%")
    rtf = ", ".join(f"{k} {v:.4f}" for k, v in result["real_time_factor"].items())
    print(f"real-time factor: {rtf}")


if __name__ == "__main__":
    sys.exit(main())
