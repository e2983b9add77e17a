import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import corpora

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_command(name: str, *args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs a command (`w2v-make-shards args…`, as `python -m w2v.cli.make_shards args…`: the same
    main the console script calls) as a user would, from the repo root."""
    module = "w2v.cli." + name.removeprefix("w2v-").replace("-", "_")
    return _run([sys.executable, "-m", module, *map(str, args)], name, check, timeout)


def run_tool(script: str, *args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python tools/<script> args…` (the demo) from the repo root."""
    return _run([sys.executable, str(ROOT / "tools" / script), *map(str, args)], script, check, timeout)


def _run(cmd: list[str], name: str, check: bool, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_tiny_model(folder: Path, vocab: dict[str, int]) -> Path:
    """A randomly initialised two-layer Wav2Vec2ForCTC with its processor saved in `folder`, as
    train.py saves a model (no attention mask: group norm)."""
    import json

    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=False)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0)
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def commonvoice(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    return root, corpora.make_commonvoice(root)


@pytest.fixture(scope="session")
def librispeech(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls") / "test-clean"
    return root, corpora.make_librispeech(root)


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    return root, corpora.make_manifest(root, "jsonl")


@pytest.fixture(scope="session")
def cv_shards(commonvoice, tmp_path_factory):
    """The Common Voice test corpus as 3 FLAC shards of 2 samples each."""
    src, expected = commonvoice
    out = tmp_path_factory.mktemp("shards") / "cv"
    run_command("w2v-make-shards", src, "--out", out, "--max-shard-samples", "2", "--no-progress", check=True)
    return out, expected


@pytest.fixture(scope="session")
def memorised(cv_shards, tmp_path_factory) -> Path:
    """The output folder of a `python train.py` run that memorises the 6 Common Voice utterances
    (250 updates of configs/tiny.yaml): a model that transcribes, for the tests that need one."""
    shards, _ = cv_shards
    out = tmp_path_factory.mktemp("memorised") / "mem"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--train_shards", str(shards), "--output_dir", str(out), "--eval_shards", str(shards),
           "--max_steps", "250", "--eval_steps", "250", "--warmup_steps", "15", "--logging_steps", "10",
           "--max_batch_seconds", "30"]
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**env, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return out


@pytest.fixture(scope="session")
def hub_ctc_folder(tmp_path_factory) -> Path:
    """A CTC model folder made with transformers' own classes in the 960h layout: `<pad>` = 0, `<s>`,
    `</s>`, `<unk>`, `|`, upper-case letters, do_lower_case false."""
    import json

    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder = tmp_path_factory.mktemp("wav2vec2-960h-layout")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
             **{c: 5 + i for i, c in enumerate("ETAONIHSRDLUMWCFGYPBVK'XJQZ")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     bos_token="<s>", eos_token="</s>", word_delimiter_token="|", do_lower_case=False)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=False)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(32, 32, 32), conv_kernel=(10, 8, 4), conv_stride=(5, 8, 8),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
                            feat_extract_norm="group")
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
