"""MMS adapter fine-tuning (--adapter_lang) on a tiny MMS-shaped checkpoint made with transformers' own classes."""

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from tests.conftest import ROOT, run_command
from tests.test_train import train_directly
from w2v.config import TrainConfig
from w2v.model import ADAPTER_FILE, load_model
from w2v.run_folder import load_for_inference
from w2v.text import Vocabulary

LANG = "xyz"  # a language new to the checkpoint
KNOWN = "abc"  # a language whose adapters the checkpoint has


@pytest.fixture(scope="module")
def mms_folder(tmp_path_factory) -> Path:
    """The MMS layout, small: stable layer norm, attention adapters in every layer (adapter_attn_dim),
    a head for its default language (12 labels), and adapter.abc.safetensors beside it."""
    folder = tmp_path_factory.mktemp("mms-tiny")
    config = Wav2Vec2Config(vocab_size=12, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, conv_dim=(32, 32, 32), conv_kernel=(10, 8, 4),
                            conv_stride=(5, 8, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            feat_extract_norm="layer", do_stable_layer_norm=True, adapter_attn_dim=16)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config)
    model.save_pretrained(folder)
    torch.manual_seed(1)
    model.init_adapter_layers()
    save_file({k: v.detach().contiguous() for k, v in model._get_adapters().items()},
              folder / ADAPTER_FILE.format(KNOWN), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def adapter_run(mms_folder, cv_shards, tmp_path_factory) -> Path:
    shards, _ = cv_shards
    out = tmp_path_factory.mktemp("adapters") / "run"
    proc = train_directly(out, shards, "--model_name_or_path", str(mms_folder), "--adapter_lang", LANG,
                          "--max_steps", "3", "--save_steps", "1", "--save_total_limit", "5",
                          "--learning_rate", "1e-3", "--max_batch_size", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"MMS adapters for '{LANG}': new adapter layers" in proc.stdout
    return out


def adapter_names(folder: Path) -> set[str]:
    return set(load_file(folder / ADAPTER_FILE.format(KNOWN)))


def test_adapter_training_changes_only_the_adapters_and_the_head(mms_folder, adapter_run):
    base = load_file(mms_folder / "model.safetensors")
    final = load_file(adapter_run / "final" / "model.safetensors")
    after_1 = load_for_inference(adapter_run / "checkpoints" / "step-1")[0].state_dict()
    trained = adapter_names(mms_folder)
    assert trained == {k for k in final if ".adapter_layer." in k or k.startswith("lm_head.")}
    frozen = [k for k in final if k not in trained]
    assert len(frozen) > 20 and all(torch.equal(base[k], final[k]) for k in frozen)  # bitwise
    assert final["lm_head.weight"].shape[0] == len(Vocabulary.load(adapter_run / "vocab.json"))
    moved = [k for k in trained if not torch.equal(after_1[k], final[k])]
    assert set(moved) == trained  # every adapter weight and the head learned from update 2 on


def test_transformers_target_lang_gives_our_logits(mms_folder, adapter_run, tmp_path):
    adapter = adapter_run / "final" / ADAPTER_FILE.format(LANG)
    assert set(load_file(adapter)) == adapter_names(mms_folder)
    ours = load_for_inference(adapter_run / "final")[0]
    # the MMS way: the untouched base checkpoint with the language's adapter file beside it
    beside_base = tmp_path / "mms"
    shutil.copytree(mms_folder, beside_base)
    shutil.copy(adapter, beside_base)
    theirs = Wav2Vec2ForCTC.from_pretrained(beside_base, target_lang=LANG).eval()
    also = Wav2Vec2ForCTC.from_pretrained(beside_base).eval()
    also.load_adapter(LANG)
    by_flag = load_for_inference(adapter_run / "final", adapter_lang=LANG)[0]
    audio = torch.randn(2, 16000)
    with torch.no_grad():
        expected = ours(audio).logits
        for model in (theirs, also, by_flag):
            assert (model(audio).logits - expected).abs().max().item() <= 1e-5


def test_a_language_the_checkpoint_has_starts_from_its_adapters(mms_folder, cv_shards, tmp_path):
    shards, _ = cv_shards
    cfg = TrainConfig(model_name_or_path=str(mms_folder), adapter_lang=KNOWN, freeze_feature_encoder=False)
    vocab = Vocabulary.build(["a b"])
    model, note = load_model(cfg, vocab)
    saved = load_file(mms_folder / ADAPTER_FILE.format(KNOWN))
    state = model.state_dict()
    layers = [k for k in saved if not k.startswith("lm_head.")]
    assert layers and all(torch.equal(saved[k], state[k]) for k in layers)
    assert state["lm_head.weight"].shape[0] == len(vocab)  # a head for this vocabulary, not theirs
    assert f"from {ADAPTER_FILE.format(KNOWN)}" in note
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(saved)


def test_adapter_mistakes_are_one_line(cv_shards, hub_ctc_folder, mms_folder, tmp_path):
    shards, _ = cv_shards
    proc = train_directly(tmp_path / "a", shards, "--model_name_or_path", str(hub_ctc_folder), "--adapter_lang", LANG)
    assert proc.returncode == 2 and "has no adapter layers" in proc.stderr and "Traceback" not in proc.stderr
    proc = train_directly(tmp_path / "b", shards, "--model_name_or_path", str(mms_folder), "--adapter_lang", LANG,
                          "--freeze_finetune_steps", "5")
    assert proc.returncode == 2 and "freeze_finetune_steps does not apply" in proc.stderr
    with pytest.raises(ValueError, match="no adapter.qqq.safetensors"):
        load_for_inference(mms_folder, adapter_lang="qqq")


def test_evaluate_and_transcribe_take_the_adapter_language(mms_folder, adapter_run, cv_shards, tmp_path):
    """An MMS folder as the hub has it: the base weights, one adapter file and one vocabulary per
    language in vocab.json; --adapter_lang picks both, and scores as the trained model does."""
    shards, _ = cv_shards
    mms = tmp_path / "mms"
    shutil.copytree(mms_folder, mms)
    shutil.copy(adapter_run / "final" / ADAPTER_FILE.format(LANG), mms)
    tokens = json.loads((adapter_run / "final" / "vocab.json").read_text())
    (mms / "vocab.json").write_text(json.dumps({KNOWN: {"<pad>": 0}, LANG: tokens}))
    shutil.copy(adapter_run / "final" / "text_normalizer.json", mms)
    figures = {}
    for name, model, extra in (("final", adapter_run / "final", []), ("mms", mms, ["--adapter_lang", LANG])):
        out = tmp_path / f"{name}.json"
        proc = run_command("w2v-evaluate", "--model", model, "--shards", shards, "--json", out, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        figures[name] = {k: v for k, v in json.loads(out.read_text()).items() if k != "real_time_factor"}
    assert figures["mms"] == figures["final"] and figures["final"]["greedy"]["words"] > 0
    proc = run_command("w2v-evaluate", "--model", mms, "--shards", shards)
    assert proc.returncode == 2 and "pick one with --adapter_lang" in proc.stderr and "Traceback" not in proc.stderr
    with tarfile.open(sorted(shards.glob("*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".flac"))
        (tmp_path / "clip.flac").write_bytes(tar.extractfile(member).read())
    texts = [run_command("w2v-transcribe", model, tmp_path / "clip.flac", *extra)
             for model, extra in ((adapter_run / "final", []), (mms, ["--adapter_lang", LANG]))]
    assert all(t.returncode == 0 for t in texts) and texts[0].stdout == texts[1].stdout


def test_the_mms_adapter_recipe_plans(mms_folder, cv_shards, tmp_path):
    shards, _ = cv_shards
    proc = train_directly(tmp_path / "plan", shards, "--model_name_or_path", str(mms_folder), "--adapter_lang", LANG,
                          "--dry_run", "--mixed_precision", "no", config=ROOT / "configs" / "mms-adapter.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rest is frozen" in proc.stdout and "dry run: nothing trained" in proc.stdout
