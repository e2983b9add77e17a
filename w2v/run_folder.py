"""A training run's folder, written by train.py and read back by w2v-evaluate and w2v-transcribe.

    OUTPUT_DIR/config.yaml, vocab.json       the run's settings (with the precision used), its vocabulary
    OUTPUT_DIR/metrics.jsonl                  one line per logging step and evaluation
    OUTPUT_DIR/checkpoints/step-N/            Accelerate's save_state, each rank's loader state,
                                              trainer_state.json, vocab.json, and model/ (the model's
                                              config, processor and normaliser: a checkpoint is a model);
                                              with FSDP the weights and optimizer are in sharded/
                                              (torch.distributed.checkpoint, one file per rank)
    OUTPUT_DIR/best/                          the best model by --metric_for_best_model, best_state.json
    OUTPUT_DIR/final/                         a plain Hugging Face folder (or best/ with
                                              --load_best_model_at_end)

Every folder is written under a temporary name and renamed when complete: a crash never leaves a
half-written one where a resume, an evaluation or `pipeline()` would read it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

from w2v.atomic import TMP_SUFFIX, atomic_dir, replace_path
from w2v.config import ConfigError, TrainConfig
from w2v.fsdp import CTC_PREFIX, SHARDED_STATE, ShardedTraining, load_full_weights
from w2v.model import ADAPTER_FILE, adapter_weights
from w2v.text import TextNormalizer

if TYPE_CHECKING:
    from w2v.data.loader import SpeechLoader

# Settings a checkpoint must share with the run that resumes it (else the batches or shapes differ).
# World size, dataloader workers and accumulation may change (an elastic resume re-plans the rest of
# the epoch); the model and the epoch's samples and batching may not.
RESUME_MUST_MATCH = ("model_name_or_path", "model_config", "max_batch_seconds", "max_batch_size", "num_buckets",
                     "shuffle_buffer", "seed", "min_duration", "max_duration", "train_shards")
BEST_STATE = "best_state.json"  # in OUTPUT_DIR/best: the update, metric and value it was kept for
CHECKPOINT_MODEL_FILES = "model"  # in checkpoints/step-N: the model's config, processor and normaliser


@dataclass
class ModelFiles:
    """What makes a folder a model: its config, processor (tokenizer and feature extractor) and
    text normaliser, so that evaluation normalises references exactly as training did; with the
    weights for final/ and best/ (a checkpoint's weights are in Accelerate's state beside them)."""

    model: Wav2Vec2ForCTC
    processor: Wav2Vec2Processor
    normalizer: TextNormalizer
    adapter_lang: str | None = None  # MMS adapter training: adapter.CODE.safetensors beside the weights

    def save(self, folder: Path, weights: bool = False, state_dict: dict | None = None) -> None:
        """`state_dict`: the weights to write when the model's own are shards (FSDP)."""
        if weights:
            self.model.save_pretrained(folder, state_dict=state_dict)
            if self.adapter_lang:
                save_file(adapter_weights(self.model, state_dict), folder / ADAPTER_FILE.format(self.adapter_lang),
                          metadata={"format": "pt"})
        else:
            self.model.config.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        self.normalizer.save(folder)


def checkpoints(out: Path) -> list[Path]:
    """OUTPUT_DIR's checkpoints, oldest first."""
    return sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(out: Path, which: str | None) -> Path | None:
    """The checkpoint to resume from: `latest` (there must be one), `auto` (the latest, or None when
    there is none: a requeued job's first start), a folder, or None for a fresh run."""
    if which in ("latest", "auto"):
        found = checkpoints(out)
        if not found and which == "latest":
            raise ConfigError(f"--resume_from_checkpoint latest: no checkpoint in {out / 'checkpoints'}")
        return found[-1] if found else None
    if which is None:
        return None
    path = Path(which)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"--resume_from_checkpoint {path}: not a checkpoint folder (no trainer_state.json)")
    return path


def prepare_output_dir(out: Path, ckpt: Path | None, cfg: TrainConfig, say) -> None:
    """A fresh run must not mix with another run's files: its metrics would be appended to theirs,
    `latest` could resume theirs and pruning could delete its own checkpoints."""
    if ckpt is not None:
        return
    leftovers = [p for p in (out / "checkpoints", out / "metrics.jsonl", out / "final") if p.exists()]
    if not leftovers:
        return
    names = ", ".join(p.name for p in leftovers)
    if cfg.resume_from_checkpoint == "auto":  # this run, requeued before its first checkpoint
        say(f"--resume_from_checkpoint auto: no checkpoint yet, starting afresh (replacing {names})")
    elif not cfg.overwrite_output_dir:
        go_on = ("pass --resume_from_checkpoint latest (or auto) to continue it" if checkpoints(out) else
                 "it has no checkpoint to continue from: pass --resume_from_checkpoint auto to start afresh in it")
        raise ConfigError(f"{out} holds another run ({names}): {go_on}, or --overwrite_output_dir to replace it, "
                          "or choose another --output_dir")
    for path in leftovers:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def padded_seconds_per_update(loader: SpeechLoader, cfg: TrainConfig, world_size: int) -> float:
    """What one update trains on, in padded seconds over all ranks (the effective batch)."""
    return loader.padded_seconds_per_batch() * cfg.gradient_accumulation_steps * world_size


def save_checkpoint(accelerator: Accelerator, out: Path, update: int, cfg: TrainConfig, loader: SpeechLoader,
                    counters: dict, schedule: dict, files: ModelFiles, sharded: ShardedTraining | None = None) -> None:
    """save_state into a temporary folder, renamed when complete: a crash never damages the last good one.
    Its `model/` holds the model's config, processor and normaliser, so that w2v-evaluate and
    w2v-transcribe read a checkpoint as a model (load_for_inference)."""
    root = out / "checkpoints"
    # every rank writes into it (its own RNG and loader state), so the name is fixed, not random
    tmp, final = root / f".step-{update}{TMP_SUFFIX}", root / f"step-{update}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # with FSDP: the schedule and random states; the rest below
    if sharded is not None:
        sharded.save(tmp / SHARDED_STATE)
    (tmp / f"loader_rank{accelerator.process_index}.json").write_text(json.dumps(loader.state_dict()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"update": update, "counters": counters, "world_size": accelerator.num_processes,
                 "num_workers": loader.workers, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                 "padded_seconds_per_update": padded_seconds_per_update(loader, cfg, accelerator.num_processes),
                 **schedule, "config": {k: getattr(cfg, k) for k in RESUME_MUST_MATCH}}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        shutil.copyfile(out / "vocab.json", tmp / "vocab.json")
        files.save(tmp / CHECKPOINT_MODEL_FILES)
        replace_path(tmp, final)
        kept = checkpoints(out)
        for old in kept[: max(0, len(kept) - (cfg.save_total_limit or len(kept)))]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def check_resumable(cfg: TrainConfig, state: dict, vocab_file: Path, ckpt: Path) -> None:
    diffs = [f"{k}: checkpoint {state['config'].get(k)!r}, now {getattr(cfg, k)!r}"
             for k in RESUME_MUST_MATCH if state["config"].get(k) != getattr(cfg, k)]
    if (ckpt / "vocab.json").read_text() != vocab_file.read_text():
        diffs.append("vocab.json differs")
    sharded = (ckpt / SHARDED_STATE).is_dir()
    if sharded != bool(cfg.fsdp):  # full_shard and shard_grad_op save alike
        diffs.append(f"fsdp: checkpoint {'sharded' if sharded else 'not sharded (DDP)'}, now {cfg.fsdp or 'DDP'}")
    if diffs:
        raise ConfigError(f"{ckpt} comes from another configuration; it cannot be resumed:\n  "
                          + "\n  ".join(diffs))


def resume(ckpt: Path, cfg: TrainConfig, accelerator: Accelerator, loader: SpeechLoader,
           vocab_file: Path, sharded: ShardedTraining | None = None) -> tuple[int, dict]:
    """Model, optimizer, schedule, RNG and loader from a checkpoint; (update, counters). The same
    world resumes exactly; another one re-plans the rest of the epoch (SpeechLoader.load_state_dict)."""
    say = accelerator.print
    state = json.loads((ckpt / "trainer_state.json").read_text())
    check_resumable(cfg, state, vocab_file, ckpt)
    accelerator.load_state(str(ckpt))
    if sharded is not None:
        sharded.load(ckpt / SHARDED_STATE)
    loader_states = [json.loads(p.read_text()) for p in sorted(ckpt.glob("loader_rank*.json"),
                                                               key=lambda p: int(p.stem[len("loader_rank"):]))]
    try:
        how = loader.load_state_dict(loader_states)
    except ValueError as exc:
        raise ConfigError(f"{ckpt}: {exc}") from None
    update = state["update"]
    say(f"resumed from {ckpt} at update {update} (epoch {loader.epoch}, {how})")
    if how == "elastic":
        # per-rank RNG states no longer map one to one: reseed every rank from (seed, update, rank)
        set_seed(int(np.random.SeedSequence([cfg.seed, update, accelerator.process_index]).generate_state(1)[0]))
        say(f"  {state['world_size']} ranks × {state.get('num_workers', '?')} workers then, "
            f"{accelerator.num_processes} × {loader.workers} now: the rest of the epoch is planned anew "
            f"over the samples not yet used; random states reseeded from (seed, update, rank)")
    now = padded_seconds_per_update(loader, cfg, accelerator.num_processes)
    if "padded_seconds_per_update" in state:
        changed = abs(now - state["padded_seconds_per_update"]) >= 0.05 * now
        say(f"  padded seconds per update: {state['padded_seconds_per_update']:.0f} then, {now:.0f} now"
            + (" (the effective batch changed: --gradient_accumulation_steps adjusts it)" if changed else ""))
    return update, state["counters"]


def beats_best(out: Path, cfg: TrainConfig, record: dict) -> bool:
    """Whether this evaluation beats the model best/ holds (or none is kept yet; a resumed run
    compares with what best/ holds). A NaN metric never wins."""
    value = record[cfg.metric_for_best_model]
    if not math.isfinite(value):
        return False
    state_file = out / "best" / BEST_STATE
    if state_file.is_file():
        kept = json.loads(state_file.read_text())
        if kept["metric"] == cfg.metric_for_best_model and (
                value <= kept["value"] if cfg.greater_is_better else value >= kept["value"]):
            return False
    return True


def keep_if_best(accelerator: Accelerator, out: Path, cfg: TrainConfig, update: int, record: dict,
                 files: ModelFiles, sharded: ShardedTraining | None = None) -> bool:
    """OUTPUT_DIR/best/ becomes this model when it beats the one kept. Every rank calls it: rank 0
    decides and writes; with FSDP every rank takes part in gathering the weights."""
    better = broadcast_object_list([beats_best(out, cfg, record) if accelerator.is_main_process else None])[0]
    if not better:
        return False
    weights = sharded.full_weights() if sharded is not None else None
    if accelerator.is_main_process:
        with atomic_dir(out / "best") as tmp:
            files.save(tmp, weights=True, state_dict=weights)
            (tmp / BEST_STATE).write_text(json.dumps({
                "update": update, "metric": cfg.metric_for_best_model, "value": record[cfg.metric_for_best_model],
                "greater_is_better": cfg.greater_is_better}))
    return True


def save_final(accelerator: Accelerator, out: Path, files: ModelFiles, from_best: bool,
               sharded: ShardedTraining | None = None) -> tuple[Path, dict | None]:
    """OUTPUT_DIR/final: a plain Hugging Face folder (model, tokenizer, feature extractor, and the
    text normaliser); with `from_best` and a best/ kept, a copy of best/. Every rank calls it: rank
    0 decides and writes; with FSDP every rank takes part in gathering the weights (unless best/ is
    copied). Returns the folder and, when it is best/'s copy, what best/ was kept for (on rank 0)."""
    final = out / "final"
    copy_best = broadcast_object_list([from_best and (out / "best").is_dir() if accelerator.is_main_process
                                       else None])[0]
    weights = sharded.full_weights() if sharded is not None and not copy_best else None
    if not accelerator.is_main_process:
        return final, None
    with atomic_dir(final) as tmp:
        if copy_best:
            tmp.rmdir()
            shutil.copytree(out / "best", tmp)
        else:
            files.save(tmp, weights=True, state_dict=weights)
    best = final / BEST_STATE
    return final, json.loads(best.read_text()) if best.is_file() else None


# --------------------------------------------------------------------------------------------------
# Reading a model back: a model folder (final/, best/, w2v-export's), or a checkpoint
# --------------------------------------------------------------------------------------------------


def model_folder_kind(folder: str | Path) -> str:
    """"model" (a Hugging Face folder) or "checkpoint" (train.py's checkpoints/step-N, with its
    `model/` files); anything else is a ValueError that says what the folder lacks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such model folder")
    if (folder / "trainer_state.json").is_file():
        if not (folder / CHECKPOINT_MODEL_FILES / "config.json").is_file():
            raise ValueError(f"{folder}: a checkpoint without its {CHECKPOINT_MODEL_FILES}/ files (saved by an "
                             "older train.py): evaluate OUTPUT_DIR/final instead")
        return "checkpoint"
    if not (folder / "config.json").is_file():
        inside = [f"{folder / name}" for name in ("final", "best") if (folder / name / "config.json").is_file()]
        if inside:  # a train.py OUTPUT_DIR: its models are in it
            raise ValueError(f"{folder}: a train.py output folder, not a model: give {' or '.join(inside)}")
        raise ValueError(f"{folder}: not a model folder (no config.json) nor a train.py checkpoint")
    return "model"


def load_for_inference(folder: str | Path, adapter_lang: str | None = None) -> tuple[Wav2Vec2ForCTC, Path]:
    """A Wav2Vec2ForCTC in eval mode from a model folder, or from a train.py checkpoint
    (checkpoints/step-N: its weights, and the config, vocabulary and normaliser in its `model/`);
    and the folder that holds the vocabulary and normaliser. `adapter_lang`: an MMS model with
    that language's adapters and head (its adapter.CODE.safetensors). A missing folder, or
    adapter, is a ValueError."""
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar: nothing to see for a local folder
    folder = Path(folder)
    kind = model_folder_kind(folder)
    if adapter_lang:
        if kind == "checkpoint":
            raise ValueError(f"{folder}: a checkpoint holds the adapters it trained; --adapter_lang is for model "
                             "folders (final/, best/, an MMS checkpoint)")
        if not (folder / ADAPTER_FILE.format(adapter_lang)).is_file():
            have = sorted(p.name.split(".")[1] for p in folder.glob(ADAPTER_FILE.format("*")))
            raise ValueError(f"{folder}: no {ADAPTER_FILE.format(adapter_lang)} (adapters here: "
                             f"{', '.join(have) or 'none'})")
        return Wav2Vec2ForCTC.from_pretrained(folder, target_lang=adapter_lang).eval(), folder
    if kind == "checkpoint":
        files = folder / CHECKPOINT_MODEL_FILES
        model = Wav2Vec2ForCTC(Wav2Vec2Config.from_pretrained(files))
        if (folder / SHARDED_STATE).is_dir():  # an FSDP checkpoint: its shards, read as one
            load_full_weights(folder / SHARDED_STATE, model.state_dict(), CTC_PREFIX)
            return model.eval(), files
        # the training wrapper (CTCModel) holds the Hugging Face model as `model`
        state = {k.removeprefix(CTC_PREFIX): v for k, v in load_file(folder / "model.safetensors").items()}
        model.load_state_dict(state)
        return model.eval(), files
    return Wav2Vec2ForCTC.from_pretrained(folder).eval(), folder
