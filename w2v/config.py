"""Training configuration: one dataclass with Hugging Face argument names, from YAML + command line.

    accelerate launch train.py --config configs/xlsr.yaml --learning_rate 1e-4 --max_steps 2000

The YAML gives defaults, the command line overrides them. `model_config` (a dict of
`Wav2Vec2Config` fields for a model trained from scratch) is YAML-only.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from w2v.atomic import write_atomic
from w2v.flags import did_you_mean


class ConfigError(ValueError):
    """A configuration that cannot train: reported before training starts (train.py exits 2)."""


@dataclass
class TrainConfig:
    # --- data -----------------------------------------------------------------------------------
    train_shards: str | None = field(default=None, metadata={"help": "shard folder, brace pattern, glob or URLs"})
    eval_shards: str | None = field(default=None, metadata={"help": "held-out shards for WER/CER"})
    train_index: str | None = field(default=None, metadata={"help": "index.json for pipe:/URL shards"})
    eval_index: str | None = None
    output_dir: str = "runs/default"
    max_batch_seconds: float = field(default=200.0, metadata={
        "help": "cap on padded audio seconds per batch (n × longest): long audio cannot OOM"})
    max_batch_size: int = field(default=0, metadata={"help": "cap on utterances per batch (0: none)"})
    min_duration: float = 0.5
    max_duration: float = field(default=20.0, metadata={
        "help": "drop longer utterances (long audio is the usual cause of out-of-memory errors)"})
    num_buckets: int = 30
    shuffle_buffer: int = 1000
    dataloader_num_workers: int = 2
    eval_max_batch_seconds: float | None = field(default=None, metadata={
        "help": "padded audio seconds per evaluation batch (default: w2v-evaluate's, 200)"})
    # --- text -----------------------------------------------------------------------------------
    lower_case: bool = True
    chars_to_ignore: str | None = field(default=None, metadata={
        "help": "characters removed from transcripts (default: punctuation and typographic quotes, "
                "apostrophes kept)"})
    vocab_path: str | None = field(default=None, metadata={"help": "use this vocab.json instead of building one"})
    # --- model ----------------------------------------------------------------------------------
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "a local pretrained Hugging Face folder (nothing is downloaded)"})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "a checkpoint with a CTC head for another vocabulary: start a fresh head for this one"})
    freeze_feature_encoder: bool = True
    freeze_finetune_steps: int = field(default=0, metadata={"help": "updates during which only the CTC head trains"})
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    layerdrop: float = 0.0
    hidden_dropout: float = 0.0
    activation_dropout: float = 0.0
    attention_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.0
    gradient_checkpointing: bool = False
    adapter_lang: str | None = field(default=None, metadata={
        "help": "MMS adapter fine-tuning: train only this language's attention adapters and a CTC head (base "
                "frozen) on a checkpoint with adapter_attn_dim; saves adapter.CODE.safetensors beside the model"})
    # --- parallelism ----------------------------------------------------------------------------
    fsdp: str | None = field(default=None, metadata={
        "help": "full_shard | shard_grad_op: shard weights, gradients and optimizer state over the ranks (PyTorch "
                "FSDP2, one unit per transformer layer); unset: DDP, every rank holds all of them"})
    # --- optimisation ---------------------------------------------------------------------------
    learning_rate: float = 1e-4
    weight_decay: float = 0.005
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = field(default="tri_stage", metadata={"help": "tri_stage | linear | cosine | constant"})
    warmup_steps: int = field(default=0, metadata={"help": "0: warmup_ratio of max_steps"})
    warmup_ratio: float = 0.1
    hold_ratio: float = field(default=0.4, metadata={"help": "tri_stage: share of steps held at the peak"})
    final_lr_scale: float = field(default=0.05, metadata={"help": "tri_stage/cosine: final lr / peak lr"})
    max_steps: int = field(default=0, metadata={"help": "optimizer updates (0: from num_train_epochs)"})
    num_train_epochs: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = field(default=None, metadata={
        "help": "no | fp16 | bf16 (unset: what accelerate launch says, else no); train.py's flag, then the "
                "launcher's fp16/bf16, then the YAML's value decide, and the run prints which one it used"})
    seed: int = 42
    # --- logging, evaluation, checkpoints -----------------------------------------------------
    logging_steps: int = 50
    eval_steps: int = 500
    save_steps: int = 500
    save_total_limit: int | None = field(default=2, metadata={
        "help": "checkpoints kept, the newest (at least 1; unset: all)"})
    metric_for_best_model: str = field(default="eval_wer", metadata={
        "help": "eval_wer | eval_cer | eval_loss: OUTPUT_DIR/best/ keeps the model that scored best on it"})
    greater_is_better: bool = field(default=False, metadata={"help": "whether a larger metric_for_best_model is better"})
    load_best_model_at_end: bool = field(default=False, metadata={
        "help": "final/ is the best model (best/) rather than the last one; needs --eval_shards"})
    dry_run: bool = field(default=False, metadata={
        "help": "check the config, shards, vocabulary and model, print the plan per rank, and stop before training"})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "latest | auto (latest if there is one, else a fresh start: for requeued jobs) | a checkpoint folder"})
    preemption_signals: str = field(default="SIGTERM,SIGUSR1", metadata={
        "help": "signals that stop the run after the update in progress, with a checkpoint (none: off)"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "a fresh run into a folder that holds another run's checkpoints and metrics: replace them"})
    log_format: str = field(default="text", metadata={
        "help": "text (a bar on a terminal, one line per logging step in a file) | json (each record a line)"})
    report_to: str = field(default="none", metadata={
        "help": "none | all (every installed tracker) | a comma list of tensorboard, wandb"})
    num_eval_examples: int = 3
    # YAML only (init=False keeps them off the command line): Wav2Vec2Config fields for a model
    # from scratch, and text replacements [[old, new], …] applied before normalisation
    model_config: dict | None = field(default=None, init=False)
    replacements: list | None = field(default=None, init=False)

    # Where mixed_precision came from ("train.py --mixed_precision" or the YAML file): set by
    # parse_config, None for a value set in code (a class attribute, not a field: not in to_dict).
    mixed_precision_source = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


YAML_ONLY = ("model_config", "replacements")


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Every setting of a run as YAML (what `--config` reads back to repeat it), written atomically."""
    text = "# the resolved settings of this run: `train.py --config THIS_FILE` repeats it\n"
    settings = {**cfg.to_dict(), "resume_from_checkpoint": None}  # a repeat starts afresh
    write_atomic(path, (text + yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)).encode())


def read_yaml(path: str | Path) -> dict:
    """The settings of a YAML config file; an unknown key is an error (a typo must not pass)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected `key: value` lines")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(did_you_mean(k, known) for k in unknown)}")
    return values


# options whose value Hugging Face's scripts take as a space-separated list of characters
CHARACTER_LISTS = ("--chars_to_ignore",)


def _join_character_lists(argv: list[str]) -> list[str]:
    """`--chars_to_ignore , ? . !` (run_speech_recognition_ctc.py's form) as `--chars_to_ignore ,?.!`."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in CHARACTER_LISTS:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            if j > i + 1:
                out.append("".join(argv[i + 1:j]))
            i = j
        else:
            i += 1
    return out


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """`--config FILE.yaml` for defaults, then `--key value` overrides (Hugging Face names). A
    mistake (a missing or bad YAML, an unknown flag: the closest one is named) is a ConfigError."""
    from transformers import HfArgumentParser

    argv = _join_character_lists(list(sys.argv[1:] if argv is None else argv))
    yaml_values: dict = {}
    config_path = None
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            config_path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            if not config_path or config_path.startswith("--"):
                raise ConfigError("--config needs a YAML file")
            yaml_values = read_yaml(config_path)
            del argv[i:i + (1 if "=" in arg else 2)]
            break
    parser = HfArgumentParser(TrainConfig, allow_abbrev=False)  # --learning_rat is a typo, not --learning_rate
    parser.add_argument("--config", metavar="FILE.yaml", help="a YAML file whose settings are the defaults that the "
                        "flags override (configs/*.yaml)")
    # YAML values become the defaults the command line overrides
    parser.set_defaults(**{k: v for k, v in yaml_values.items() if k not in YAML_ONLY})
    cfg, *_, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        flags = [a.split("=", 1)[0].lstrip("-") for a in remaining if a.startswith("--")]
        if flags:
            raise ConfigError(f"unknown flag{'s' if len(flags) > 1 else ''} "
                              + ", ".join("--" + did_you_mean(f, known).replace("(did you mean ", "(did you mean --")
                                          for f in flags))
        raise ConfigError(f"values without a flag: {' '.join(remaining)}")
    for key in YAML_ONLY:
        if key in yaml_values:
            setattr(cfg, key, yaml_values[key])
    if any(a == "--mixed_precision" or a.startswith("--mixed_precision=") for a in argv):
        cfg.mixed_precision_source = "train.py --mixed_precision"
    elif yaml_values.get("mixed_precision") is not None:
        cfg.mixed_precision_source = str(config_path)
    return cfg


PRECISIONS = ("no", "fp16", "bf16")


def resolve_mixed_precision(cfg: TrainConfig, launcher: str | None, cuda: bool) -> tuple[str, str]:
    """The precision a run uses and a sentence saying why, by one rule: train.py's own flag, then
    `accelerate launch --mixed_precision fp16|bf16` (or `accelerate config`), then the YAML's
    `mixed_precision` (a recipe's default), then "no". The launcher's "no" counts as unset: it is
    also what accelerate passes when nothing was chosen. train.py's flag against a different
    fp16/bf16 of the launcher is an error, as is fp16 without a CUDA GPU. `launcher`: the
    ACCELERATE_MIXED_PRECISION that accelerate launch sets for its processes."""
    own, source = cfg.mixed_precision, cfg.mixed_precision_source or "the config"
    if own is False:  # `mixed_precision: no` in YAML reads as the boolean false
        own = "no"
    launched = launcher if launcher in ("fp16", "bf16") else None
    for value, where in ((own, source), (launcher, "accelerate launch")):
        if value is not None and value not in PRECISIONS:
            raise ConfigError(f"mixed precision {value!r} from {where}: choose one of {', '.join(PRECISIONS)}")
    if own is not None and source == "train.py --mixed_precision" and launched and launched != own:
        raise ConfigError(f"train.py --mixed_precision {own} but accelerate launch --mixed_precision {launched}: "
                          "give one of them")
    if own is not None and source == "train.py --mixed_precision":
        precision, why = own, "from train.py --mixed_precision"
    elif launched:
        precision, why = launched, "from accelerate launch"
        if own is not None and own != launched:
            why += f"; {source} says {own}, and the launcher's choice wins over a config file's"
    elif own is not None:
        precision, why = own, f"from {source}"
    else:
        precision, why = "no", "neither the launcher nor the config sets it"
    if precision == "fp16" and not cuda:
        raise ConfigError(f"mixed precision fp16 ({why}) needs a CUDA GPU; on the CPU use bf16 or no")
    return precision, why
