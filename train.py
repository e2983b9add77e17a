#!/usr/bin/env python
"""Fine-tune wav2vec2 / XLS-R for CTC speech recognition.

    accelerate launch train.py --config configs/xlsr.yaml --train_shards shards/train --eval_shards shards/dev \
        --model_name_or_path /models/wav2vec2-xls-r-300m --output_dir runs/xlsr

Read top to bottom: set-up, vocabulary, model, data, optimizer, (resume), the update loop, the end.
One update = one window of `gradient_accumulation_steps` micro-batches. The CTC loss is summed over
every label of the window on every rank and divided by the window's label count gathered across
ranks, so batch size, accumulation and world size do not change the gradient.
"""

from __future__ import annotations

if __name__ == "__main__":  # as a command: start again with tcmalloc when there is one, before torch loads
    from w2v.host_memory import use_tcmalloc

    use_tcmalloc()

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from w2v.config import ConfigError, TrainConfig, parse_config, resolve_mixed_precision, save_config
from w2v.curves import plot_curves, read_metrics
from w2v.data.labels import vocabulary_from_shards
from w2v.data.loader import LoaderConfig, SpeechLoader, load_kernels
from w2v.fsdp import STRATEGIES, ShardedTraining, full_norm, rank_state_mb, shard_model
from w2v.host_memory import count_parameters, estimate, loaded, rss_mb, strategy_table
from w2v.metrics import ErrorCounts
from w2v.model import CTCModel, build_processor, check_model_config, load_model, wants_attention_mask
from w2v.preemption import PREEMPTED_EXIT_CODE, PreemptionSignal, parse_signals
from w2v.progress import Progress, eta, on_terminal
from w2v.run_folder import (
    ModelFiles,
    find_checkpoint,
    keep_if_best,
    prepare_output_dir,
    resume,
    save_checkpoint,
    save_final,
)
from w2v.schedule import SCHEDULES, make_scheduler, schedule_warnings
from w2v.scoring import (
    EVAL_BATCH_SECONDS,
    ctc_sum,
    evaluation_loader,
    greedy_scores,
    log_softmax_fp32,
    unknown_characters,
)
from w2v.shards.spec import SelectedShard, select_shards
from w2v.text import TextNormalizer, Vocabulary
from w2v.trackers import resolve_trackers, where


def main(cfg: TrainConfig) -> None:
    # ---------------------------------------------------------------- set-up
    train_shards, eval_shards = check_inputs(cfg)  # each shard spec resolved once, here
    trackers = resolve_trackers(cfg.report_to)
    cfg.mixed_precision, precision_why = resolve_mixed_precision(
        cfg, os.environ.get("ACCELERATE_MIXED_PRECISION"), torch.cuda.is_available())
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.layerdrop > 0 or cfg.freeze_finetune_steps > 0)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              log_with=trackers or None,
                              project_dir=cfg.output_dir, kwargs_handlers=[ddp])
    main_proc = accelerator.is_main_process
    say = accelerator.print  # reports and results from rank 0 only, on stdout

    def tell(line: str) -> None:  # progress and warnings from rank 0, on stderr
        if main_proc:
            print(line, file=sys.stderr, flush=True)

    if one_rank_of_several(accelerator.num_processes):
        tell("warning: accelerate launch --cpu --num_processes N starts ONE process (this run has 1 rank); for N "
             "ranks on the CPU: accelerate launch --multi_gpu --num_processes N train.py …")
    logging.basicConfig(level=logging.WARNING, force=True,
                        format=f"[rank {accelerator.process_index}] %(levelname)s %(name)s: %(message)s")
    # transformers' own bars (loading and saving a model) would cut through ours, and put carriage
    # returns in a log file
    transformers.utils.logging.disable_progress_bar()
    out = Path(cfg.output_dir)
    # rank 0 decides (a shared file system may show the others another listing), every rank follows
    ckpt = broadcast_object_list([find_checkpoint(out, cfg.resume_from_checkpoint) if main_proc else None])[0]
    saved = json.loads((ckpt / "trainer_state.json").read_text()) if ckpt is not None else {}
    if main_proc:
        prepare_output_dir(out, ckpt, cfg, say)
        out.mkdir(parents=True, exist_ok=True)
    say(f"mixed precision: {cfg.mixed_precision} ({precision_why})")
    if trackers:  # started before any data is read: one that cannot start stops the run now
        try:
            accelerator.init_trackers("w2v", config={k: v for k, v in cfg.to_dict().items()
                                                     if isinstance(v, int | float | str | bool)})
        except Exception as exc:  # noqa: BLE001 (each tracker fails in its own way)
            raise ConfigError(f"--report_to {cfg.report_to}: a tracker did not start: {exc}") from None
        for name in trackers:
            say(f"logging to {where(name, out)}")
    set_seed(cfg.seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))

    # ---------------------------------------------------------------- vocabulary (built once, on rank 0)
    normalizer = TextNormalizer.from_config(cfg.to_dict())
    vocab_file = out / "vocab.json"
    with accelerator.main_process_first():
        if main_proc:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")  # with the precision actually used
            if cfg.vocab_path:  # with the special tokens its tokenizer files name
                Vocabulary.load(cfg.vocab_path).save(vocab_file)
            elif not vocab_file.is_file() or ckpt is None:
                vocabulary_from_shards(train_shards, normalizer).save(vocab_file)
    vocab = Vocabulary.load(vocab_file, normalizer)
    matched = normalizer.for_vocabulary(vocab)
    if matched is not normalizer:
        say(f"the vocabulary is {vocab.case}-case: transcripts are {vocab.case}-cased to match it")
        normalizer = vocab.normalizer = matched

    # ---------------------------------------------------------------- model
    model, head_note = load_model(cfg, vocab)
    model_files = ModelFiles(model, build_processor(vocab_file, model.config, vocab), normalizer, cfg.adapter_lang)
    use_mask = wants_attention_mask(model.config)
    conv = (model.config.conv_kernel, model.config.conv_stride)
    say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"feat_extract_norm={model.config.feat_extract_norm} → attention mask {'on' if use_mask else 'off'}, "
        f"vocabulary {len(vocab)}; {head_note}")

    # ---------------------------------------------------------------- data
    ranks = {"rank": accelerator.process_index, "world_size": accelerator.num_processes}
    started_data = time.perf_counter()
    try:
        train_loader = SpeechLoader(train_shards, loader_config(cfg, use_mask), vocab=vocab,
                                    conv_kernel=conv[0], conv_stride=conv[1], **ranks)
    except ValueError as exc:  # every utterance filtered out: how many, and why
        raise ConfigError(f"--train_shards {cfg.train_shards}: {exc} (see min_duration, max_duration and "
                          "max_batch_seconds)") from None
    eval_loader = evaluation_loader(eval_shards, cfg.eval_max_batch_seconds or EVAL_BATCH_SECONDS, use_mask,
                                    num_workers=cfg.dataloader_num_workers, max_batch_size=cfg.max_batch_size,
                                    num_buckets=cfg.num_buckets, **ranks) if eval_shards else None
    unknown = [unknown_characters(vocab, texts_with_unknown(train_loader, vocab), "training text", "→ [UNK]")]
    if eval_loader is not None:
        unknown.append(unknown_characters(vocab, eval_loader.table.texts(), "evaluation text", "→ [UNK]"))
    for line in filter(None, unknown):
        say(line)
    updates_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    planned, compiled = time.perf_counter() - started_data, load_kernels()
    if planned + compiled > 5:  # numba compiles its kernels on a machine's first run, then loads them
        tell(f"loader ready in {planned + compiled:.1f} s: epoch plan {planned:.1f} s, decoding kernels "
             f"{compiled:.1f} s (numba compiles them on a machine's first run and caches them)")
    # a resumed run keeps its length and warm-up (an elastic resume has other epochs), unless asked
    max_steps = cfg.max_steps or saved.get("max_steps") or math.ceil(cfg.num_train_epochs * updates_per_epoch)
    warmup = cfg.warmup_steps or (saved["warmup_steps"] if "warmup_steps" in saved and not cfg.max_steps
                                  else int(cfg.warmup_ratio * max_steps))
    schedule = {"max_steps": max_steps, "warmup_steps": warmup, "learning_rate": cfg.learning_rate,
                "lr_scheduler_type": cfg.lr_scheduler_type}
    for line in schedule_warnings(schedule, saved):
        tell(f"warning: {line}")
    memory = estimate(model.config, sum(p.numel() for p in model.parameters()), cfg.max_batch_seconds,
                      cfg.num_buckets, train_loader.cfg.lookahead, cfg.dataloader_num_workers, torch.cuda.is_available())
    allocator = loaded()
    say(f"{memory.describe()}; allocator {allocator}"
        + (" (install libtcmalloc-minimal4 to keep it flat: docs/memory.md)" if allocator == "glibc" else ""))
    say(f"train: {len(train_loader.table)} utterances, {len(train_loader)} batches per epoch and rank, "
        f"{updates_per_epoch} updates per epoch, {max_steps} updates; planned padding "
        f"{100 * train_loader.padding_fraction():.1f}%; dropped at plan: {train_loader.drops_at_plan() or 'none'}")
    if cfg.dry_run:  # everything above ran as for training: config, shards, vocabulary, model, plan
        if main_proc:
            print_plan(train_loader, cfg, accelerator.num_processes)
            for line in strategy_table(count_parameters(model), accelerator.num_processes, cfg.mixed_precision,
                                       cfg.fsdp or "ddp"):
                print(line)
            print("dry run: nothing trained, no checkpoint written")
        accelerator.end_training()
        return

    # ---------------------------------------------------------------- model parallelism, optimizer, schedule
    ctc_model, sharded = CTCModel(model), None
    if cfg.fsdp:  # sharded before the optimizer is made: it must hold the shards
        shard_model(ctc_model, model.wav2vec2.encoder.layers, cfg.fsdp, accelerator.device)
    optimizer = make_optimizer(ctc_model, cfg)
    # Not passed to prepare(): an AcceleratedScheduler would step once per process; ours steps
    # exactly once per optimizer update that really happened.
    scheduler = make_scheduler(optimizer, cfg.lr_scheduler_type, max_steps, warmup, cfg.hold_ratio, cfg.final_lr_scale)
    if cfg.fsdp:  # checkpointed by torch.distributed.checkpoint, not by Accelerate's save_state
        sharded = ShardedTraining(ctc_model, optimizer)
        say(f"fsdp {cfg.fsdp} over {accelerator.num_processes} rank(s): each holds 1/{accelerator.num_processes} "
            "of the weights, gradients and optimizer state; one unit per transformer layer")
    else:
        ctc_model, optimizer = accelerator.prepare(ctc_model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    # ---------------------------------------------------------------- resume
    update, counters = 0, {"skipped_nonfinite": 0, "skipped_overflow": 0}
    if ckpt is not None:
        update, counters = resume(ckpt, cfg, accelerator, train_loader, vocab_file, sharded)

    # ---------------------------------------------------------------- the update loop
    preemption = PreemptionSignal(parse_signals(cfg.preemption_signals))
    metrics_file = open(out / "metrics.jsonl", "a") if main_proc else None  # noqa: SIM115
    # a bar on a terminal; in a log file one line per logging step (below), nothing in between
    bar = Progress(total=max_steps, initial=update, desc="training", unit="update", disable=not main_proc, interval=None)
    started, start_update = time.monotonic(), update
    window_log = LogWindow(train_loader)
    batches = iterate_forever(train_loader)
    while update < max_steps:
        window = next_window(batches, train_loader, cfg.gradient_accumulation_steps)
        ctc_model.train()
        train_encoder = update >= cfg.freeze_finetune_steps
        # labels in the whole window, on all ranks: the loss denominator
        local_tokens = sum(int((b["labels"] >= 0).sum()) for b in window)
        tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum").item()
        loss_sum = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(ctc_model):
                batch_loss = ctc_loss_sum(ctc_model, batch, vocab.pad_id, accelerator, train_encoder)
                # DDP averages gradients over ranks; × world size turns that into a plain sum
                accelerator.backward(batch_loss * accelerator.num_processes / max(tokens, 1))
            loss_sum += batch_loss.detach()
        step = optimizer_step(accelerator, ctc_model, optimizer, scheduler, loss_sum, cfg.max_grad_norm,
                              preemption.requested)
        if step.outcome != "stepped":
            counters[f"skipped_{step.outcome}"] += 1
        update += 1
        bar.update(1)
        window_log.add(window, loss_sum, local_tokens)

        if update % cfg.logging_steps == 0 or update == max_steps:
            record = window_log.flush(accelerator, update, scheduler, step.grad_norm, counters,
                                      rank_state_mb(ctc_model, optimizer))
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            write_record(metrics_file, record, accelerator)
            if cfg.log_format == "json":
                say(json.dumps(finite(record)))
            elif not on_terminal():
                tell(progress_line(record, max_steps, eta(update - start_update, max_steps - start_update,
                                                          time.monotonic() - started)))
        if eval_loader is not None and (update % cfg.eval_steps == 0 or update == max_steps) and not step.stop:
            record, examples = evaluate(ctc_model, eval_loader, vocab, accelerator, cfg.num_eval_examples,
                                        in_step=sharded is not None)
            write_record(metrics_file, {"update": update, **record}, accelerator)
            if main_proc:  # the run's curves so far, redrawn at each evaluation
                plot_curves(*read_metrics(out / "metrics.jsonl"), out / "curves.png")
            # the header first, on a line of its own (not after a progress bar), then its examples
            say(f"\nupdate {update}: eval WER {100 * record['eval_wer']:.2f}%  CER {100 * record['eval_cer']:.2f}% "
                f"over {record['eval_utterances']} utterances; not scored: {record['eval_excluded'] or 'none'}")
            for ref, hyp in examples:
                say(f"  ref: {ref}\n  hyp: {hyp}")
            if keep_if_best(accelerator, out, cfg, update, record, model_files, sharded):
                say(f"update {update}: the best {cfg.metric_for_best_model} so far: saved {out / 'best'}")
        if update % cfg.save_steps == 0 or update == max_steps or step.stop:  # the last too: it can go on
            save_checkpoint(accelerator, out, update, cfg, train_loader, counters, schedule, model_files, sharded)
        if step.stop:  # every rank agreed in optimizer_step: they all leave after the same update
            bar.close()
            say(f"stopped by {preemption.received or 'a signal on another rank'} after update {update}: "
                f"checkpoint {out / 'checkpoints' / f'step-{update}'}; go on with --resume_from_checkpoint auto")
            accelerator.end_training()
            sys.exit(PREEMPTED_EXIT_CODE)
    bar.close()

    # ---------------------------------------------------------------- the end: a Hugging Face folder
    accelerator.wait_for_everyone()
    final, best = save_final(accelerator, out, model_files, cfg.load_best_model_at_end, sharded)
    if main_proc:
        if best is not None:
            say(f"final/ is the best model: update {best['update']}, {best['metric']} {best['value']:.4f}")
        say(f"saved {final} (transformers.pipeline('automatic-speech-recognition', model='{final}') loads it)")
        metrics_file.close()
    if counters["skipped_nonfinite"] or counters["skipped_overflow"]:  # every rank: they must agree
        print(f"rank {accelerator.process_index}: skipped updates: {counters}", flush=True)
    accelerator.end_training()


# ==================================================================================================
# The pieces the loop uses, in the order it uses them
# ==================================================================================================


BEST_METRICS = ("eval_wer", "eval_cer", "eval_loss")


def check_inputs(cfg: TrainConfig) -> tuple[list[SelectedShard], list[SelectedShard] | None]:
    """Bad configuration → a clear error before any model or data work. Returns the training and
    evaluation shards, each spec resolved once for the whole run."""
    if not cfg.train_shards:
        raise ConfigError("--train_shards is required (a shard folder, brace pattern, glob or URLs)")
    if cfg.gradient_accumulation_steps < 1:
        raise ConfigError("--gradient_accumulation_steps must be >= 1")
    if cfg.vocab_path and not Path(cfg.vocab_path).is_file():
        raise ConfigError(f"--vocab_path {cfg.vocab_path}: no such file")
    if cfg.model_config:
        check_model_config(cfg.model_config)
    try:
        parse_signals(cfg.preemption_signals)
    except ValueError as exc:
        raise ConfigError(f"--preemption_signals {cfg.preemption_signals}: {exc}") from None
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"--log_format {cfg.log_format}: choose text or json")
    if cfg.adapter_lang and cfg.freeze_finetune_steps:
        raise ConfigError("--adapter_lang trains only the adapters and the head (the base is frozen): "
                          "freeze_finetune_steps does not apply; set it to 0")
    for plugin in ("FSDP", "DEEPSPEED"):  # their wrapping and checkpoints are not the ones this loop saves and resumes
        if os.environ.get(f"ACCELERATE_USE_{plugin}", "").lower() == "true":
            raise ConfigError(f"accelerate launch's {plugin.title()} plugin is not used by train.py: launch without it "
                              "and pass --fsdp full_shard (or shard_grad_op) to shard the model")
    if cfg.fsdp is not None and cfg.fsdp not in STRATEGIES:
        raise ConfigError(f"--fsdp {cfg.fsdp}: choose one of {', '.join(STRATEGIES)} (unset: DDP)")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        raise ConfigError(f"--save_total_limit {cfg.save_total_limit}: keep at least 1 checkpoint (unset: all)")
    selected = []
    for flag, spec, index in (("--train_shards", cfg.train_shards, cfg.train_index),
                              ("--eval_shards", cfg.eval_shards, cfg.eval_index)):
        try:  # a typo is named before any model work
            selected.append(select_shards(spec, index) if spec else None)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
    if cfg.metric_for_best_model not in BEST_METRICS:
        raise ConfigError(f"--metric_for_best_model {cfg.metric_for_best_model}: choose one of {', '.join(BEST_METRICS)}")
    if cfg.load_best_model_at_end and not cfg.eval_shards:
        raise ConfigError("--load_best_model_at_end needs --eval_shards (the best model is the best on them)")
    if cfg.lr_scheduler_type not in SCHEDULES:
        raise ConfigError(f"--lr_scheduler_type {cfg.lr_scheduler_type}: choose one of {', '.join(SCHEDULES)}")
    return selected[0], selected[1]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the weights that train; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                             fused=torch.cuda.is_available())  # one kernel per step on a GPU


def loader_config(cfg: TrainConfig, attention_mask: bool) -> LoaderConfig:
    """The loader settings for the training shards."""
    return LoaderConfig(
        max_batch_seconds=cfg.max_batch_seconds, max_batch_size=cfg.max_batch_size, num_buckets=cfg.num_buckets,
        shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, min_duration=cfg.min_duration,
        max_duration=cfg.max_duration, return_attention_mask=attention_mask, num_workers=cfg.dataloader_num_workers,
        pin_memory=torch.cuda.is_available())


def one_rank_of_several(num_processes: int) -> bool:
    """accelerate launch asked for several processes but started one: with --cpu (and without
    --multi_gpu) it runs its one-process launcher, which still sets MASTER_ADDR/PORT for them."""
    env = os.environ
    return (num_processes == 1 and env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in env
            and "WORLD_SIZE" not in env)


def texts_with_unknown(loader: SpeechLoader, vocab: Vocabulary) -> list[str]:
    """The training transcripts whose labels hold [UNK] (found in the labels the loader made)."""
    return [loader.table.text(int(i)) for i in loader.table.samples_with_label(vocab.unk_id)]


def iterate_forever(loader: SpeechLoader):
    """Batches across epoch boundaries; the loader's state says where we are."""
    while True:
        if loader.finished:
            loader.set_epoch(loader.epoch + 1)
        yield from loader


def next_window(batches, loader: SpeechLoader, size: int) -> list[dict]:
    """The micro-batches of one update; a window does not cross an epoch boundary."""
    window: list[dict] = []
    epoch = loader.epoch
    while len(window) < size:
        window.append(next(batches))
        if loader.finished or loader.epoch != epoch:
            break
    return window


def ctc_loss_sum(model, batch: dict, blank: int, accelerator: Accelerator, train_encoder: bool) -> torch.Tensor:
    """Summed CTC loss of one micro-batch, log-softmax and CTC in fp32, over the true output lengths."""
    device = accelerator.device
    values = batch["input_values"].to(device, non_blocking=True)  # pinned on CUDA: the host goes on
    mask = batch["attention_mask"].to(device, non_blocking=True) if "attention_mask" in batch else None
    with accelerator.autocast():
        logits = model(values, attention_mask=mask, train_encoder=train_encoder)
    if batch["empty"]:  # a stand-in batch that keeps ranks in step: weight zero, graph intact
        return logits.float().sum() * 0.0
    frames = accelerator.unwrap_model(model).output_lengths(batch["input_lengths"].to(device, non_blocking=True))
    return ctc_sum(log_softmax_fp32(logits), batch["labels"].to(device, non_blocking=True), frames, blank)


@dataclass
class Step:
    """What optimizer_step did: "stepped", "nonfinite" (a NaN/inf loss or gradient: parameters
    untouched) or "overflow" (the fp16 scaler skipped it and lowered its scale); the gradient norm;
    and whether any rank was asked to stop (then every rank stops after this update)."""

    outcome: str
    grad_norm: torch.Tensor | None
    stop: bool


def optimizer_step(accelerator: Accelerator, model, optimizer, scheduler, loss_sum: torch.Tensor,
                   max_grad_norm: float, stop_requested: bool = False) -> Step:
    """Clip, then step the optimizer and the schedule, or skip the update."""
    # one all-reduce carries both flags: a non-finite loss anywhere skips the update everywhere, and a
    # preemption signal on any rank stops every rank after it (no extra synchronisation per update)
    flags = accelerator.reduce(torch.stack([(~torch.isfinite(loss_sum)).float(),
                                            torch.tensor(float(stop_requested), device=loss_sum.device)]), "sum")
    bad, stop = (flags > 0).tolist()
    # Accelerate's optimizer (DDP) unscales and steps through the fp16 scaler itself. FSDP's is a plain
    # one: the loop drives the scaler, and decides an overflow from the total norm, the same on every
    # rank (the scaler's own inf check sees only this rank's shards).
    scaler = accelerator.scaler if not isinstance(optimizer, AcceleratedOptimizer) else None
    if scaler is not None and not bad:
        scaler.unscale_(optimizer)  # before clipping
    grad_norm = None if bad else full_norm(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm))
    overflow = grad_norm is not None and not torch.isfinite(grad_norm)
    if overflow and accelerator.scaler is None:
        bad = True  # with a scaler, an inf gradient is an overflow: the step is skipped, the scale lowered
    outcome = "nonfinite"
    if not bad:
        if scaler is None:
            optimizer.step()  # Accelerate's says when its fp16 scaler skipped the step; a plain one has no scaler
            outcome = "overflow" if getattr(optimizer, "step_was_skipped", False) else "stepped"
        elif overflow:
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            outcome = "overflow"
        else:
            scaler.step(optimizer)
            scaler.update()
            outcome = "stepped"
        if outcome == "stepped":  # the schedule follows the updates that really happened
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return Step(outcome, grad_norm, stop)


class LogWindow:
    """Accumulates what happened since the last log line."""

    def __init__(self, loader: SpeechLoader):
        self.loader = loader
        self.reset()

    def reset(self) -> None:
        self.loss = 0.0
        self.tokens = 0
        self.audio = 0.0
        self.padded = 0.0
        self.updates = 0
        self.start = time.perf_counter()
        self.wait0 = self.loader.wait_seconds

    def add(self, window: list[dict], loss_sum: torch.Tensor, tokens: int) -> None:
        if torch.isfinite(loss_sum):
            self.loss += loss_sum.item()
            self.tokens += tokens
        self.audio += sum(b["audio_seconds"] for b in window)
        self.padded += sum(b["padded_seconds"] for b in window)
        self.updates += 1

    def flush(self, accelerator: Accelerator, update: int, scheduler, grad_norm, counters: dict,
              state_mb: float) -> dict:
        sums = accelerator.reduce(torch.tensor([self.loss, self.tokens, self.audio, self.padded],
                                               dtype=torch.float64, device=accelerator.device), "sum").tolist()
        elapsed = time.perf_counter() - self.start
        # the loader's figures of every rank: waits summed (and the slowest rank's), drops summed,
        # peak memory the largest (what decides an OOM)
        wait = torch.tensor(self.loader.wait_seconds - self.wait0, dtype=torch.float64, device=accelerator.device)
        wait_sum, wait_max = accelerator.reduce(wait, "sum").item(), accelerator.reduce(wait, "max").item()
        drops: Counter = Counter()
        retries = 0
        for rank in gather_object([self.loader.diagnostics()]):
            drops.update(rank["drops"])
            retries += rank["remote_retries"]
        record = {
            "update": update,
            "loss": sums[0] / max(sums[1], 1),  # per label
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "loss_scale": accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0,
            "audio_seconds_per_second": sums[2] / max(elapsed, 1e-9),
            "updates_per_second": self.updates / max(elapsed, 1e-9),
            "padding_percent": 100.0 * (1 - sums[2] / sums[3]) if sums[3] else 0.0,
            "loader_wait_seconds": wait_sum,
            "loader_wait_seconds_max_rank": wait_max,
            "world_size": accelerator.num_processes,
            "host_rss_mb_max_rank": accelerator.reduce(torch.tensor(rss_mb(), device=accelerator.device), "max").item(),
            # weights and optimizer state one rank holds: all of them under DDP, 1/N under FSDP
            "model_state_mb_max_rank": accelerator.reduce(torch.tensor(state_mb, device=accelerator.device),
                                                          "max").item(),
            "epoch": self.loader.epoch,
            "drops": dict(drops),
            "remote_retries": retries,
            **counters,
        }
        if torch.cuda.is_available():  # each rank's peak since the start; the largest decides an OOM
            peak = torch.tensor(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, device=accelerator.device)
            record["peak_memory_gib"] = accelerator.reduce(peak, "max").item()
        self.reset()
        return record


def progress_line(record: dict, max_steps: int, to_go: str) -> str:
    """One plain line per logging step, for log files (no carriage returns)."""
    return (f"update {record['update']}/{max_steps} (epoch {record['epoch']}): loss {record['loss']:.4f}, "
            f"lr {record['lr']:.3g}, grad norm {record['grad_norm']:.3g}, "
            f"{record['audio_seconds_per_second']:.1f} audio-s/s, padding {record['padding_percent']:.1f}%, "
            f"loader wait {record['loader_wait_seconds']:.2f} s, ETA {to_go}")


def finite(record: dict) -> dict:
    """NaN/inf (a skipped update's grad norm) as null: strict JSON readers refuse NaN."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def write_record(handle, record: dict, accelerator: Accelerator) -> None:
    if handle is not None:
        handle.write(json.dumps(finite(record)) + "\n")
        handle.flush()
    accelerator.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=record["update"])


def evaluate(model, loader: SpeechLoader, vocab: Vocabulary, accelerator: Accelerator,
             n_examples: int, in_step: bool = False) -> tuple[dict, list[tuple[str, str]]]:
    """Greedy WER/CER over the eval shards, exact across ranks (each utterance counted once), and
    what could not be scored (damaged shards or members), by reason; and a few (reference,
    hypothesis) pairs of this rank to show. `in_step`: every rank runs every batch through the model,
    its stand-ins too (FSDP's forward gathers weights from all ranks)."""
    model.eval()
    mine = greedy_scores(model, loader, vocab, accelerator.device, accelerator.autocast, n_examples, in_step)
    total = accelerator.gather(torch.tensor([mine.counts.as_list()], device=accelerator.device))
    total = ErrorCounts(*total.sum(0).tolist())
    loss = torch.tensor([mine.loss_sum, mine.labels], dtype=torch.float64, device=accelerator.device)
    loss_sum, labels_total = accelerator.reduce(loss, "sum").tolist()
    excluded: Counter = Counter()
    for drops in gather_object([loader.diagnostics()["drops"]]):
        excluded.update(drops)
    model.train()
    return {"eval_wer": total.wer, "eval_cer": total.cer, "eval_loss": loss_sum / max(labels_total, 1),
            "eval_utterances": total.utterances, "eval_words": total.words, "eval_word_edits": total.word_edits,
            "eval_chars": total.chars, "eval_char_edits": total.char_edits,
            "eval_empty_references": total.empty_references, "eval_excluded": dict(excluded)}, mine.examples


def print_plan(loader: SpeechLoader, cfg: TrainConfig, world: int) -> None:
    """This epoch per rank: batches, updates, audio and padded hours, padding, the padded seconds
    each update gives the rank, and its largest batch (what sets its memory)."""
    print(f"dry run: the plan of epoch {loader.epoch} for {world} rank(s), gradient accumulation "
          f"{cfg.gradient_accumulation_steps}; dropped at plan: {loader.drops_at_plan() or 'none'}")
    print(f"{'rank':>4} {'batches':>8} {'updates':>8} {'audio h':>8} {'padded h':>9} {'padding':>8} "
          f"{'padded s/update':>16} {'largest batch s':>16}")
    for rank in range(world):
        audio_per_batch, padded_per_batch = loader.batch_seconds(rank)
        audio, padded, batches = float(audio_per_batch.sum()), float(padded_per_batch.sum()), len(padded_per_batch)
        updates = math.ceil(batches / cfg.gradient_accumulation_steps)
        per_update = padded / max(updates, 1)  # this rank's share of an update
        print(f"{rank:>4} {batches:>8} {updates:>8} {audio / 3600:>8.3f} {padded / 3600:>9.3f} "
              f"{100 * (1 - audio / padded) if padded else 0.0:>7.1f}% {per_update:>16.1f} "
              f"{padded_per_batch.max(initial=0.0):>16.1f}")


def run() -> int:
    """train.py as a command: its exit status (2: a mistake, said in one line; 130: stopped at once
    by a second Ctrl-C; a preempted run leaves with PREEMPTED_EXIT_CODE from main)."""
    try:
        main(parse_config())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, without a checkpoint
        print("interrupted: no checkpoint of this update; --resume_from_checkpoint auto goes on from the last one",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run())
