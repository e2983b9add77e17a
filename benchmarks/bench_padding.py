#!/usr/bin/env python
"""Normalise + pad one batch: w2v.data.padding.normalize_and_pad against what people use today.

    python benchmarks/bench_padding.py [--json OUT]

A batch is 20 utterances of 6-10 s at 16 kHz (about the 200 padded-seconds cap), float32 unless
noted. Every method returns the padded float32 batch and an attention mask.

* ours_loader: what SpeechLoader does per batch: int16 decoder output through ``normalize_and_pad``
  and a bool mask from the lengths (``attention_mask_from_lengths``: two memsets per row, a quarter
  of the bytes of an int32 mask; the model only sums and compares it)
* ours_hf_layout: float32 input, and the mask as int32 (the feature extractor's output layout)
* copy_pad_floor: no normalisation at all, just copying each row into an ``np.empty`` batch and
  writing padding and an int32 mask: the memory traffic every method pays (the machine's floor)
* numpy_loop: per utterance ``(x - mean) / sqrt(var + 1e-7)``, ``np.zeros`` batch, copy in
* hf_feature_extractor: ``Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)``
  on the list with ``padding=True``

One thread (numba and torch). Methods run interleaved over several rounds on 6 different batches;
within a round each method runs 3 times back to back (its steady state, as in a loader that calls it
batch after batch, rather than right after another method freed and the allocator returned hundreds
of MB to the OS); each reports its fastest run per batch (averaged over the batches), which is the
least disturbed by other load on a shared machine. Before timing, every method but the floor is
checked against the feature extractor's output on the same batch (values and mask). Throughput is
real audio seconds per wall second. The numba compile time (cold cache, separate process) and the
first call (cache load) are reported separately and excluded.
"""

import argparse
import json
import time
from pathlib import Path

import numba
import numba_cold  # benchmarks/ is on sys.path when run as a script
import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor

from w2v.data.padding import attention_mask_from_lengths, normalize_and_pad

SR = 16_000


def make_batches(count: int = 6, size: int = 20, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [(0.1 * rng.standard_normal(int(rng.uniform(6, 10) * SR)) + 0.01).astype(np.float32) for _ in range(size)]
        for _ in range(count)
    ]


def numpy_loop(batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(x.size for x in batch)
    values = np.zeros((len(batch), width), dtype=np.float32)
    mask = np.zeros((len(batch), width), dtype=np.int32)
    for i, x in enumerate(batch):
        values[i, : x.size] = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mask[i, : x.size] = 1
    return values, mask


def copy_pad(batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(x.size for x in batch)
    values = np.empty((len(batch), width), dtype=np.float32)
    mask = np.empty((len(batch), width), dtype=np.int32)
    for i, x in enumerate(batch):
        values[i, : x.size] = x
        values[i, x.size :] = 0
        mask[i, : x.size] = 1
        mask[i, x.size :] = 0
    return values, mask


def cold_compile_seconds() -> float:
    """First-call time of normalize_and_pad in a fresh process with an empty numba cache."""
    code = (
        "import time, numpy as np; from w2v.data.padding import normalize_and_pad; t = time.perf_counter(); "
        "normalize_and_pad([np.ones(10, np.float32)]); print(time.perf_counter() - t)"
    )
    return numba_cold.cold_compile_seconds(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    numba.set_num_threads(1)
    torch.set_num_threads(1)

    compile_s = cold_compile_seconds()
    t = time.perf_counter()
    normalize_and_pad([np.ones(10, np.float32)])
    first_call_s = time.perf_counter() - t

    batches = make_batches()
    ints = [[np.clip(x * 32768, -32768, 32767).astype(np.int16) for x in b] for b in batches]
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)

    def ours(batch: list[np.ndarray], mask_dtype: type) -> tuple[np.ndarray, np.ndarray]:
        values = normalize_and_pad(batch)
        mask = attention_mask_from_lengths([x.size for x in batch], values.shape[1])
        return values, mask if mask_dtype is np.bool_ else mask.astype(mask_dtype)

    methods = {
        "ours_loader": lambda i: ours(ints[i], np.bool_),
        "ours_hf_layout": lambda i: ours(batches[i], np.int32),
        "copy_pad_floor": lambda i: copy_pad(batches[i]),
        "numpy_loop": lambda i: numpy_loop(batches[i]),
        "hf_feature_extractor": lambda i: fe(batches[i], sampling_rate=SR, padding=True, return_tensors="np"),
    }
    # Same answer first: every float32 method against HF on batch 0.
    ref = fe(batches[0], sampling_rate=SR, padding=True, return_tensors="np")
    max_err = 0.0
    for name in ("ours_hf_layout", "numpy_loop"):
        values, mask = methods[name](0)
        assert np.array_equal(mask, ref["attention_mask"]), name
        max_err = max(max_err, float(np.abs(values - ref["input_values"]).max()))
    # ours_loader takes the decoder's int16: HF gets the same samples as float32 (x / 32768)
    ref_int = fe([x.astype(np.float32) / 32768 for x in ints[0]], sampling_rate=SR, padding=True, return_tensors="np")
    values, mask = methods["ours_loader"](0)
    assert np.array_equal(mask.astype(np.int32), ref_int["attention_mask"]), "ours_loader"
    max_err = max(max_err, float(np.abs(values - ref_int["input_values"]).max()))
    assert max_err < 1e-4, max_err

    times = {name: np.full((args.rounds, len(batches)), np.inf) for name in methods}
    for r in range(args.rounds):
        for i in range(len(batches)):
            for name, fn in methods.items():
                for _ in range(3):
                    t = time.perf_counter()
                    fn(i)
                    times[name][r, i] = min(times[name][r, i], time.perf_counter() - t)
    audio_s = float(np.mean([sum(x.size for x in b) / SR for b in batches]))

    print(f"batch: {len(batches[0])} utterances of 6-10 s ({audio_s:.0f} s of audio), one thread; "
          f"max |ours - HF| = {max_err:.1e}; {args.rounds} interleaved rounds, 3 runs each per batch")
    print(f"numba compile (cold cache): {compile_s:.2f} s; first call (cache load): {first_call_s:.3f} s")
    print(f"{'method':<22}{'ms/batch':>10}{'audio s/s':>12}{'vs HF':>8}{'vs numpy':>10}")
    res: dict = {}
    for name, ts in times.items():
        sec = float(ts.min(axis=0).mean())  # fastest round per batch: least disturbed by other load
        res[name] = {"ms_per_batch": 1e3 * sec, "audio_seconds_per_second": audio_s / sec}
    hf_rate = res["hf_feature_extractor"]["audio_seconds_per_second"]
    np_rate = res["numpy_loop"]["audio_seconds_per_second"]
    for name, r in res.items():
        r["speedup_vs_hf"] = r["audio_seconds_per_second"] / hf_rate
        r["speedup_vs_numpy_loop"] = r["audio_seconds_per_second"] / np_rate
        print(f"{name:<22}{r['ms_per_batch']:10.2f}{r['audio_seconds_per_second']:12.0f}"
              f"{r['speedup_vs_hf']:8.1f}{r['speedup_vs_numpy_loop']:10.1f}")
    floor = res["copy_pad_floor"]["audio_seconds_per_second"]
    print(f"ours_hf_layout runs at {res['ours_hf_layout']['audio_seconds_per_second'] / floor:.0%} of "
          "copy_pad_floor (memory bandwidth: the bytes every method must move)")
    out = {"methods": res, "max_abs_error_vs_hf": max_err, "rounds": args.rounds, "compile_seconds": compile_s,
           "first_call_seconds": first_call_s, "batch_audio_seconds": float(audio_s)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
