"""The CTC model: a local pretrained wav2vec2/XLS-R folder with a new head, or a config from scratch.

`CTCModel` wraps `Wav2Vec2ForCTC` so that one forward argument decides whether the encoder trains
(`freeze_finetune_steps`: only the head learns at first, as in fairseq). The switch has to live
inside the module that DDP wraps: calling submodules around DDP would bypass its gradient hooks.
The CTC loss itself is computed by the training loop (sum reduction, fp32, true lengths).
"""

from __future__ import annotations

import difflib
import inspect
import json
from pathlib import Path

import torch
from torch import nn
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from w2v.config import ConfigError, TrainConfig
from w2v.text import Vocabulary

# Settings from the training config copied into the model config (SpecAugment, dropouts, layerdrop).
REGULARISATION = ("mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length",
                  "layerdrop", "hidden_dropout", "activation_dropout", "attention_dropout",
                  "feat_proj_dropout", "final_dropout")


def check_model_config(settings: dict) -> None:
    """A `model_config` key that Wav2Vec2Config does not take is an error, not a silent default
    (a typo such as `num_hiden_layers` would train the default 12 layers)."""
    known = set(inspect.signature(Wav2Vec2Config.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(settings) - known)
    hints = []
    for key in unknown:
        near = difflib.get_close_matches(key, known, n=3)
        hints.append(f"{key}: did you mean {', '.join(near)}?" if near else f"{key}: not a Wav2Vec2Config field")
    if hints:
        raise ConfigError(f"model_config has unknown keys ({'; '.join(hints)})")


def wants_attention_mask(config: Wav2Vec2Config) -> bool:
    """HF rule: layer-norm checkpoints (large, XLS-R) take the mask; group-norm ones (base) must not."""
    return config.feat_extract_norm == "layer"


def build_processor(vocab_file: str | Path, config: Wav2Vec2Config, vocab: Vocabulary) -> Wav2Vec2Processor:
    """The processor saved with the model: its tokenizer names the vocabulary's own special tokens."""
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), do_lower_case=False, **vocab.specials.tokenizer_names())
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=wants_attention_mask(config))
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def _ctc_overrides(cfg: TrainConfig, vocab: Vocabulary) -> dict:
    return {**{k: getattr(cfg, k) for k in REGULARISATION}, "vocab_size": len(vocab), "pad_token_id": vocab.pad_id,
            "ctc_loss_reduction": "sum", "ctc_zero_infinity": True}


def load_model(cfg: TrainConfig, vocab: Vocabulary) -> tuple[Wav2Vec2ForCTC, str]:
    """A pretrained local folder or `model_config` from scratch; and a sentence on its CTC head.

    A checkpoint without a CTC head (wav2vec2-base, XLS-R) gets a new one sized to the vocabulary.
    One with a head for another vocabulary (another size, or the same size with other tokens: a
    CTC model of another language) keeps it only for that vocabulary (`--vocab_path`), else it
    needs `--ignore_mismatched_sizes` for a fresh head: a head must never map ids to other letters.
    """
    if cfg.adapter_lang:
        model, note = _load_for_adapters(cfg, vocab)
    elif cfg.model_config and not cfg.model_name_or_path:
        check_model_config(cfg.model_config)
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**{**cfg.model_config, **_ctc_overrides(cfg, vocab)}))
        note = f"a model from scratch with a CTC head of {len(vocab)} labels"
    elif cfg.model_name_or_path:
        model, note = _load_pretrained(Path(cfg.model_name_or_path), cfg, vocab)
    else:
        raise ConfigError("give --model_name_or_path LOCAL_DIR or a model_config block in the YAML")
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, note


ADAPTER_FILE = "adapter.{}.safetensors"  # transformers' name: load_adapter(CODE) and target_lang=CODE read it


def _load_for_adapters(cfg: TrainConfig, vocab: Vocabulary) -> tuple[Wav2Vec2ForCTC, str]:
    """MMS adapter fine-tuning: a checkpoint with adapter layers (adapter_attn_dim), everything
    frozen but the language's attention adapters and a CTC head for this vocabulary. The
    language's adapters are loaded when the checkpoint has them (adapter.CODE.safetensors), else
    initialised; its head is kept only for its own vocabulary (--vocab_path)."""
    folder = Path(cfg.model_name_or_path or "")
    if not (folder / "config.json").is_file():
        raise ConfigError("--adapter_lang needs --model_name_or_path: a local MMS-style checkpoint folder "
                          "(with adapter_attn_dim in its config.json)")
    if getattr(Wav2Vec2Config.from_pretrained(folder), "adapter_attn_dim", None) is None:
        raise ConfigError(f"--adapter_lang {cfg.adapter_lang}: {folder} has no adapter layers (its config has no "
                          "adapter_attn_dim); adapters go on an MMS checkpoint such as mms-1b-all")
    model = Wav2Vec2ForCTC.from_pretrained(folder, ignore_mismatched_sizes=True, **_ctc_overrides(cfg, vocab))
    model.init_adapter_layers()  # adapters and head afresh (the head is sized to this vocabulary)
    adapter_file = folder / ADAPTER_FILE.format(cfg.adapter_lang)
    note = f"MMS adapters for {cfg.adapter_lang!r}: new adapter layers"
    if adapter_file.is_file():
        from safetensors.torch import load_file

        saved = load_file(adapter_file)
        head_fits = saved["lm_head.weight"].shape[0] == len(vocab) and cfg.vocab_path
        keep = {k: v for k, v in saved.items() if head_fits or not k.startswith("lm_head.")}
        model.load_state_dict(keep, strict=False)
        note = f"MMS adapters for {cfg.adapter_lang!r}: from {adapter_file.name}" + (
            ", its head too" if head_fits else "")
    for param in model.parameters():
        param.requires_grad = False
    adapters = model._get_adapters()  # transformers' own list: the adapter layers and lm_head
    for param in adapters.values():
        param.requires_grad = True
    trained = sum(p.numel() for p in adapters.values())
    note += f" and a CTC head of {len(vocab)} labels; {trained / 1e6:.2f} M weights train, the rest is frozen"
    return model, note


def adapter_weights(model: Wav2Vec2ForCTC, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapter layers and head, as transformers' load_adapter reads them (from `state_dict`
    when the model's own weights are shards)."""
    names = list(model._get_adapters())
    state = state_dict if state_dict is not None else model.state_dict()
    return {name: state[name].detach().cpu().contiguous() for name in names}


def _load_pretrained(folder: Path, cfg: TrainConfig, vocab: Vocabulary) -> tuple[Wav2Vec2ForCTC, str]:
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--model_name_or_path {folder}: no config.json there (a local Hugging Face "
                          "folder is needed; nothing is downloaded)")
    labels = getattr(Wav2Vec2Config.from_pretrained(folder), "vocab_size", None)
    if not any("lm_head" in k for k in _weight_names(folder)):
        model = Wav2Vec2ForCTC.from_pretrained(folder, ignore_mismatched_sizes=True, **_ctc_overrides(cfg, vocab))
        return model, f"a new CTC head of {len(vocab)} labels ({folder} has none)"
    vocab_file = folder / "vocab.json"  # its tokens only: their names may be any
    theirs = json.loads(vocab_file.read_text(encoding="utf-8")) if vocab_file.is_file() else None
    if labels == len(vocab) and theirs in (None, vocab.tokens):
        model = Wav2Vec2ForCTC.from_pretrained(folder, **_ctc_overrides(cfg, vocab))
        return model, f"the CTC head of {folder} ({labels} labels, its vocabulary)"
    differs = f"{labels} labels" if labels != len(vocab) else f"{labels} labels for other tokens"
    if not cfg.ignore_mismatched_sizes:
        raise ConfigError(f"{folder} has a CTC head of {differs}, the vocabulary has {len(vocab)}: pass "
                          f"--vocab_path {folder / 'vocab.json'} to keep its head and vocabulary, or "
                          "--ignore_mismatched_sizes to start a fresh head for this vocabulary")
    model = Wav2Vec2ForCTC.from_pretrained(folder, ignore_mismatched_sizes=True, **_ctc_overrides(cfg, vocab))
    if labels == len(vocab):  # same shape, other tokens: the loaded weights would map ids to wrong letters
        model._init_weights(model.lm_head)
    return model, f"a fresh CTC head of {len(vocab)} labels (--ignore_mismatched_sizes; {folder} had {differs})"


def _weight_names(folder: Path) -> list[str]:
    """Parameter names in a checkpoint folder without loading tensors."""
    names: list[str] = []
    for path in folder.glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            names += list(f.keys())
    for path in folder.glob("pytorch_model*.bin"):
        names += list(torch.load(path, map_location="meta", weights_only=True))
    return names


class CTCModel(nn.Module):
    """`Wav2Vec2ForCTC` returning logits, with the encoder optionally frozen for this forward."""

    def __init__(self, model: Wav2Vec2ForCTC):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                train_encoder: bool = True) -> torch.Tensor:
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            hidden = self.model.wav2vec2(input_values, attention_mask=attention_mask)[0]
        return self.model.lm_head(self.model.dropout(hidden))

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(input_lengths).long()
