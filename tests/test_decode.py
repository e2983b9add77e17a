"""w2v.lm.decode: greedy CTC, beam search with a real KenLM model, and the pipeline() export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_tiny_model
from w2v.lm import decode
from w2v.lm.build import find_tool

SENTENCES = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"
VOCAB = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: 3 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
INVERSE = {i: t for t, i in VOCAB.items()}
LABELS = decode.labels_from_vocab(VOCAB)


def kenlm_tool(name: str) -> str:
    try:
        return find_tool(name, build=False)
    except FileNotFoundError:
        pytest.fail(f"KenLM's {name} not found: run `make setup` (scripts/build_kenlm.sh builds it)")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    """A 3-gram ARPA, its trie binary and unigrams.txt, as w2v-build-lm lays them out."""
    folder = tmp_path_factory.mktemp("lm")
    arpa = folder / "3gram.arpa"
    subprocess.run([kenlm_tool("lmplz"), "-o", "3", "--discount_fallback", "-S", "64M", "-T", str(folder),
                    "--arpa", str(arpa)], input=SENTENCES.encode(), check=True, capture_output=True)
    subprocess.run([kenlm_tool("build_binary"), "trie", str(arpa), str(folder / "3gram.bin")],
                   check=True, capture_output=True)
    (folder / "unigrams.txt").write_text("\n".join(sorted(set(SENTENCES.split()))) + "\n")
    return folder


def frames(spec: list[dict[str, float]]) -> np.ndarray:
    """Log-probs [T, V]: each frame gives probabilities to a few labels, the rest share what is left."""
    out = np.full((len(spec), len(LABELS)), 1e-6, dtype=np.float64)
    for t, probs in enumerate(spec):
        for label, p in probs.items():
            out[t, LABELS.index(label)] = p
    out /= out.sum(axis=1, keepdims=True)
    return np.log(out).astype(np.float32)


def spell(text: str, **ambiguous: dict[str, float]) -> np.ndarray:
    """Frames spelling ``text`` (a blank after each character); ``ambiguous`` overrides a character's frame."""
    spec = []
    for ch in text:
        spec += [ambiguous.get(ch, {ch: 0.95}), {"": 0.95}]
    return frames(spec)


# --- greedy ------------------------------------------------------------------------------------


def test_greedy_collapses_repeats_keeps_blank_separated_repeats_and_spaces():
    ids = [VOCAB[c] for c in "hh"] + [0] + [VOCAB[c] for c in "ell"] + [0] + [VOCAB[c] for c in "lo||"] + [0, 2]
    ids += [VOCAB["w"], VOCAB["w"], 2]
    one_hot = np.eye(len(VOCAB), dtype=np.float32)[ids]
    assert decode.greedy_decode(one_hot, INVERSE, blank_id=0) == ["hello w"]


def test_greedy_batch_ignores_padding_frames():
    rows = [[2, VOCAB["a"], 0, VOCAB["a"], 2, VOCAB["b"]], [VOCAB["c"], VOCAB["c"], 2, 2, 1, 1]]
    logits = np.eye(len(VOCAB), dtype=np.float32)[rows]  # [2, 6, V]
    assert decode.greedy_decode(logits, INVERSE, 0, lengths=[6, 2]) == ["aa b", "c"]
    assert decode.greedy_decode(logits, INVERSE, 0) == ["aa b", "c [UNK]"]


def test_labels_from_tokenizer_cut_to_the_logits_width(tmp_path):
    from transformers import Wav2Vec2CTCTokenizer

    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    assert len(tokenizer.get_vocab()) == len(VOCAB) + 2  # <s> and </s>, which the CTC head lacks
    labels = decode.tokenizer_labels(tokenizer, len(VOCAB))
    assert labels == LABELS and labels[:4] == ["", decode.UNK_LABEL, " ", "a"]
    with pytest.raises(ValueError, match="ids must run"):
        decode.labels_from_vocab({"[PAD]": 0, "a": 2})


# --- beam search with KenLM --------------------------------------------------------------------


def test_lm_turns_the_beam_towards_an_in_vocabulary_word(lm_dir):
    logits = spell("the cat", a={"o": 0.55, "a": 0.45})  # the acoustics prefer "cot"
    assert decode.greedy_decode(logits, INVERSE, 0) == ["the cot"]
    with decode.BeamDecoder(LABELS) as no_lm:
        assert no_lm.decode(logits) == "the cot"
    for lm in (lm_dir / "3gram.arpa", lm_dir / "3gram.bin", lm_dir):  # a binary takes unigrams.txt
        with decode.BeamDecoder(LABELS, lm, alpha=0.5, beta=1.0) as with_lm:
            assert with_lm.decode(logits) == "the cat", lm


def test_a_binary_without_its_arpa_is_refused_with_the_way_out(lm_dir, tmp_path):
    binary = tmp_path / "3gram.bin"
    binary.write_bytes((lm_dir / "3gram.bin").read_bytes())
    for lm in (binary, tmp_path):
        with pytest.raises(ValueError, match="KenLM binary.*ARPA it was built from"):
            decode.BeamDecoder(LABELS, lm)


def test_batch_on_threads_matches_one_by_one(lm_dir):
    utterances = [spell("the cat", a={"o": 0.55, "a": 0.45}), spell("a dog"), spell("the mat sat")]
    width = max(len(u) for u in utterances)
    padded = np.full((len(utterances), width, len(LABELS)), -20.0, dtype=np.float32)
    for row, u in zip(padded, utterances, strict=True):
        row[: len(u)] = u
    lengths = [len(u) for u in utterances]
    with decode.BeamDecoder(LABELS, lm_dir / "3gram.arpa", processes=2) as decoder:
        one_by_one = [decoder.decode(u) for u in utterances]
        assert decoder.decode_batch(utterances) == one_by_one
        assert decoder.decode_batch(padded, lengths) == one_by_one
        assert decoder.decode_batch(decoder.prepare(padded, lengths)) == one_by_one  # what a grid reuses
        assert one_by_one[0] == "the cat"
        decoder.set_weights(alpha=0.0, beta=0.0)  # no LM weight: the acoustics win again
        assert decoder.decode_batch(utterances)[0] == "the cot"


# --- export for transformers.pipeline ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"), VOCAB)


def test_exported_folder_decodes_with_the_lm_in_pipeline(tiny_model_dir, lm_dir):
    import torch
    from transformers import Wav2Vec2ForCTC, Wav2Vec2ProcessorWithLM, pipeline

    audio = np.random.default_rng(0).standard_normal(1200).astype(np.float32)  # 75 ms: ~120 frames
    assert pipeline("automatic-speech-recognition", model=str(tiny_model_dir)).type == "ctc"

    lm_folder = decode.export_processor_with_lm(tiny_model_dir, lm_dir / "3gram.arpa", alpha=0.5, beta=1.0)
    assert sorted(p.name for p in lm_folder.iterdir()) == ["3gram.arpa", "attrs.json", "unigrams.txt"]
    decode.export_processor_with_lm(tiny_model_dir, lm_dir, alpha=0.7)  # again, from the folder: its ARPA
    assert sorted(p.name for p in lm_folder.iterdir()) == ["3gram.arpa", "attrs.json", "unigrams.txt"]
    assert json.loads((lm_folder / "attrs.json").read_text())["alpha"] == 0.7
    assert not [p for p in tiny_model_dir.iterdir() if p.name.startswith(".")]

    asr = pipeline("automatic-speech-recognition", model=str(tiny_model_dir))
    assert asr.type == "ctc_with_lm"
    text = asr(audio)["text"]
    processor = Wav2Vec2ProcessorWithLM.from_pretrained(tiny_model_dir)
    inputs = processor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = Wav2Vec2ForCTC.from_pretrained(tiny_model_dir)(inputs.input_values).logits.numpy()
    assert text == processor.batch_decode(logits).text[0]
    assert text and set(text.split()) <= set(SENTENCES.split())  # a random model, yet only LM words


# --- the same search as pyctcdecode ------------------------------------------------------------


def noisy(text: str, rng: np.random.Generator) -> np.ndarray:
    """Log-probs spelling ``text`` with 1-2 frames per character, blanks, random rivals and noise."""
    rows = []
    for ch in text:
        rows += [LABELS.index(ch)] * int(rng.integers(1, 3)) + [0] * int(rng.integers(0, 2))
    logits = rng.normal(0.0, 1.5, (len(rows), len(LABELS)))
    logits[np.arange(len(rows)), rows] += 5.0
    rivals = rng.random(len(rows)) < 0.3
    logits[rivals, rng.integers(3, len(LABELS), rivals.sum())] += 5.0
    return (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def noisy_utterances():
    rng = np.random.default_rng(7)
    words = SENTENCES.split()
    texts = [" ".join(rng.choice(words, int(rng.integers(2, 7)))) for _ in range(40)]
    return texts, [noisy(t, rng) for t in texts]


def test_same_texts_and_word_frames_as_pyctcdecode(lm_dir, noisy_utterances):
    import logging

    from pyctcdecode import build_ctcdecoder

    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    arpa = lm_dir / "3gram.arpa"
    texts, utterances = noisy_utterances
    theirs = build_ctcdecoder(LABELS, str(arpa), unigrams=(lm_dir / "unigrams.txt").read_text().split(),
                              alpha=0.5, beta=1.0)
    # decode(): history pruning on; pyctcdecode's end rule for texts ending in a delimiter
    with decode.BeamDecoder(LABELS, arpa, alpha=0.5, beta=1.0, empty_last_word=True) as ours:
        assert ours.decode_batch(utterances) == [theirs.decode(u, beam_width=100) for u in utterances]
    # decode_beams(): no history pruning, and the words' frames
    with decode.BeamDecoder(LABELS, arpa, alpha=0.5, beta=1.0, prune_history=False, empty_last_word=True) as ours:
        for u in utterances:
            best = theirs.decode_beams(u, beam_width=100)[0]
            assert ours.decode_words(u) == (best[0], best[2])
    # without an LM too
    no_lm = build_ctcdecoder(LABELS)
    with decode.BeamDecoder(LABELS, empty_last_word=True) as ours:
        assert [ours.decode(u) for u in utterances] == [no_lm.decode(u, beam_width=100) for u in utterances]


def test_texts_ending_in_a_delimiter_keep_their_last_word(lm_dir, noisy_utterances):
    """pyctcdecode scores an empty word (as unknown) after a final delimiter, which CTC models often emit;
    ours just ends the text: fewer errors on the same posteriors."""
    import jiwer

    texts, utterances = noisy_utterances
    rng = np.random.default_rng(3)
    ending = [np.concatenate([u, noisy(" ", rng)]) for u in utterances]
    arpa = lm_dir / "3gram.arpa"
    with decode.BeamDecoder(LABELS, arpa) as ours, decode.BeamDecoder(LABELS, arpa, empty_last_word=True) as rule:
        assert jiwer.wer(texts, ours.decode_batch(ending)) < jiwer.wer(texts, rule.decode_batch(ending))
        text, words = ours.decode_words(ending[0])
        assert [w for w, _ in words] == text.split() and all(0 <= a < b <= len(ending[0]) for _, (a, b) in words)


def test_export_without_the_pipeline_extra_is_one_error_line(tiny_model_dir, lm_dir, tmp_path, monkeypatch, capsys):
    from w2v.cli import export

    monkeypatch.setattr(export, "pipeline_lm_available", lambda: False)
    out = tmp_path / "exported"
    assert export.main([str(tiny_model_dir), "--lm", str(lm_dir), "--alpha", "0.5", "--beta", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w2v[pipeline-lm]" in err and "--no-deps" in err
    assert not out.exists()
