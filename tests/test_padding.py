"""normalize_and_pad, attention_mask_from_lengths and pad_labels against the transformers feature
extractor and the HF CTC collator."""

import json

import numpy as np
import pytest
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from benchmarks.baselines import DataCollatorCTCWithPadding
from w2v.data.padding import attention_mask_from_lengths, normalize_and_pad, pad_labels


def utterances() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        (0.1 * rng.standard_normal(48_000)).astype(np.float32),
        (0.3 * rng.standard_t(3, 20_000) + 0.05).astype(np.float32),  # heavy tails + DC offset
        np.zeros(16_000, dtype=np.float32),  # silence: var 0, the 1e-7 epsilon keeps it 0
        np.full(9_000, 0.25, dtype=np.float32),  # constant: exactly representable sums, all 0
        (1e-4 * rng.standard_normal(30_000)).astype(np.float32),  # var ~ epsilon: epsilon matters
        (0.5 * np.sin(np.arange(7_001) * 0.03)).astype(np.float32),
        (0.2 * rng.standard_normal(1)).astype(np.float32),
    ]


def hf(batch: list[np.ndarray]) -> dict:
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    return fe(batch, sampling_rate=16_000, padding=True, return_tensors="np")


def ours(batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """What the loader makes of a batch: the padded values and the bool mask from the lengths."""
    values = normalize_and_pad(batch)
    return values, attention_mask_from_lengths([x.size for x in batch], values.shape[1])


def test_matches_feature_extractor():
    utts = utterances()
    ref = hf(utts)
    lengths = np.array([u.size for u in utts])
    values, mask = ours(utts)
    assert values.dtype == np.float32 and mask.dtype == np.bool_
    assert values.shape == ref["input_values"].shape
    np.testing.assert_allclose(values, ref["input_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mask.astype(np.int32), ref["attention_mask"])
    for i, n in enumerate(lengths):
        assert np.all(values[i, n:] == 0.0)
        assert np.all(mask[i, :n]) and not np.any(mask[i, n:])
    assert np.all(values[2] == 0) and np.all(values[3] == 0)  # silent / constant stay zero
    real = values[0, : lengths[0]].astype(np.float64)
    assert abs(real.mean()) < 1e-6 and abs(real.std() - 1) < 1e-5


def test_padding_does_not_leak_into_statistics():
    utts = utterances()
    alone = [normalize_and_pad([u])[0] for u in utts]
    values = normalize_and_pad(utts)
    for i, u in enumerate(utts):
        np.testing.assert_array_equal(values[i, : u.size], alone[i])


def test_int16_input_matches_float_conversion():
    rng = np.random.default_rng(1)
    ints = [
        np.clip(rng.standard_normal(n) * 4000, -32768, 32767).astype(np.int16) for n in (16_000, 5_000, 24_000)
    ]
    ints.append(np.full(3_000, -7, dtype=np.int16))
    ref = hf([x.astype(np.float32) / 32768 for x in ints])
    values, mask = ours(ints)
    np.testing.assert_allclose(values, ref["input_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mask.astype(np.int32), ref["attention_mask"])


def test_empty_batch():
    values, mask = ours([])
    assert values.shape == (0, 0) and mask.shape == (0, 0)
    assert pad_labels([]).shape == (0, 0)


# --- labels: same layout as the HF example's collator ----------------------------------------


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    chars = list("abcdefghijklmnopqrstuvwxyz'")
    vocab = {"[PAD]": 0, "[UNK]": 1, "|": 2} | {c: i + 3 for i, c in enumerate(chars)}
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    path.write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(path), unk_token="[UNK]", pad_token="[PAD]", word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def test_matches_hf_ctc_collator(processor):
    texts = ["hello world", "a", "the quick brown fox", "xyz's"]
    utts = utterances()[: len(texts)]
    features = [
        {
            "input_values": processor(audio=u, sampling_rate=16_000).input_values[0],
            "labels": processor(text=t).input_ids,
        }
        for u, t in zip(utts, texts, strict=True)
    ]
    # a label id equal to the pad id inside a sequence must survive (mask, not value, decides)
    features[1]["labels"] = [0, 5, 0]
    ref = DataCollatorCTCWithPadding(processor)(features)

    labels = pad_labels([f["labels"] for f in features])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, ref["labels"].numpy())

    values, mask = ours(utts)
    np.testing.assert_allclose(values, ref["input_values"].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mask.astype(np.int64), ref["attention_mask"].numpy())


def test_pad_labels_empty_row():
    assert pad_labels([[1, 2, 3], []]).tolist() == [[1, 2, 3], [-100] * 3]
