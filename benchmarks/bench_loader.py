#!/usr/bin/env python
"""Shards → ready training batches, audio-seconds per second on one core, four paths on the same shards.

    python benchmarks/bench_loader.py [--codec flac|wav] [--minutes 20] [--json OUT]

- `ours`: w2v.data.loader.SpeechLoader (plan from the index, w2v.data.decode from bytes, numba
  normalise+pad into one buffer, bucketed batches), num_workers=0 so it is one core; building the
  loader and planning the epoch are inside the timed region, as the others' parsing and tokenising.
- `stock`: WebDataset's own `torch_audio` decoder (temporary file + torchaudio.load, which goes
  through torchcodec + FFmpeg since torchaudio 2.9) + the HF feature extractor per utterance +
  `DataCollatorCTCWithPadding` (the HF example's), batches of 8.
- `soundfile_hf`: WebDataset reading, soundfile decoding from bytes, then the same HF extractor and
  collator.
- `decode_only`: reading the tar (WebDataset) and soundfile-decoding every utterance, nothing else:
  the floor of any soundfile-based loader.
- `decode_only_w2v`: the loader's own tar reader and decoder (w2v.data.flac for FLAC, a zero-copy view
  for WAV), nothing else: the floor of `ours`, so `ours / decode_only_w2v` is the share of time
  spent decoding, and the rest is everything else (planning, normalising, padding, masks, labels).

With `--workers N`, also `ours` through 0..N DataLoader worker processes (one epoch each, after a
warm-up epoch): wall audio-s/s, and the CPU time the consuming (training) process spends per
audio-second, which is what receiving batches through PyTorch's shared memory costs it.

For FLAC, also the decoders alone on the members held in memory (no tar reading): soundfile
(libsndfile) against w2v.data.flac, interleaved, best of 5.

Then the normalise+pad kernel alone against the HF feature extractor and a numpy loop
(benchmarks/bench_padding.py). Speech of 6–10 s per utterance (espeak-ng), cached in --work.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numba
import soundfile as sf
import torch
import webdataset as wds
from baselines import DataCollatorCTCWithPadding
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from w2v.data.decode import decode_member
from w2v.data.loader import LoaderConfig, SpeechLoader
from w2v.shards.corpus import open_corpus
from w2v.shards.sharding import ShardOptions, make_shards
from w2v.shards.tar import tar_members
from w2v.synth import speak
from w2v.text import Vocabulary

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = [
    "The committee will meet again on Thursday to discuss the budget for the coming year and the new library.",
    "Most of the old houses along the river were built long before the railway arrived in the valley.",
    "She asked whether the results could be repeated with a larger group of volunteers next spring.",
    "A light rain fell all afternoon, and by six o'clock the streets of the town were nearly empty.",
    "He wrote down every number twice, just to be sure that nothing important had been missed.",
    "The library keeps its oldest maps in a cool dark room beneath the main reading hall.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"]


def make_data(work: Path, minutes: float, codec: str) -> Path:
    shards = work / f"shards-{codec}-{minutes:g}"
    if (shards / "index.json").is_file():
        return shards
    corpus = work / f"corpus-{minutes:g}"
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        shutil.rmtree(corpus, ignore_errors=True)
        corpus.mkdir(parents=True)
        distinct = []
        for i in range(16):
            wav = speak(SENTENCES[i % len(SENTENCES)], corpus / f"d{i}.wav", VOICES[i % 4], 135 + 8 * (i % 5))
            distinct.append((wav, sf.info(str(wav)).duration))
        rows, total, i = [], 0.0, 0
        while total < minutes * 60:
            wav, seconds = distinct[i % len(distinct)]
            os.link(wav, corpus / f"u{i:05d}.wav")
            rows.append({"audio": f"u{i:05d}.wav", "text": SENTENCES[i % len(SENTENCES)]})
            total, i = total + seconds, i + 1
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_shards(open_corpus(manifest), shards, ShardOptions(codec=codec, workers=os.cpu_count() or 1,
                                                            max_shard_samples=64), progress=False)
    return shards


def run_ours(shards: Path, vocab: Vocabulary, timings: dict | None = None) -> float:
    """Audio seconds per second for one epoch, building the loader (opening the index's columns,
    the labels, the epoch's plan) included, as the other paths parse and tokenise inside their
    loops; the set-up's own share is recorded in `timings`."""
    start = time.perf_counter()
    loader = SpeechLoader(shards, LoaderConfig(max_batch_seconds=80, num_workers=0, shuffle=True),
                          vocab=vocab)
    len(loader)  # computes the epoch's plan
    if timings is not None:
        timings["setup_seconds"] = time.perf_counter() - start
    audio = 0.0
    for batch in loader:
        audio += batch["audio_seconds"]
    return audio / (time.perf_counter() - start)


def run_hf(shards: Path, vocab: Vocabulary, processor, stock: bool) -> float:
    urls = [str(p) for p in sorted(shards.glob("*.tar"))]
    ext = "flac" if any(shards.glob("*.tar")) and _codec(shards) == "flac" else "wav"
    dataset = wds.WebDataset(urls, shardshuffle=False)
    dataset = dataset.decode(wds.torch_audio) if stock else dataset
    extractor, collate = processor.feature_extractor, DataCollatorCTCWithPadding(processor)
    audio, pending, start = 0.0, [], time.perf_counter()
    for sample in dataset:
        if stock:
            wave, sr = sample[ext]
            wave = wave[0].numpy()
        else:
            wave, sr = sf.read(io.BytesIO(sample[ext]), dtype="float32")
        meta = sample["json"]
        text = (meta if isinstance(meta, dict) else json.loads(meta))["text"]
        pending.append({"input_values": extractor(wave, sampling_rate=sr)["input_values"][0],
                        "labels": processor.tokenizer(vocab.normalizer(text))["input_ids"]})
        audio += len(wave) / sr
        if len(pending) == 8:
            collate(pending)
            pending = []
    if pending:
        collate(pending)
    return audio / (time.perf_counter() - start)


def run_decode_only(shards: Path) -> float:
    urls = [str(p) for p in sorted(shards.glob("*.tar"))]
    ext = _codec(shards)
    audio, start = 0.0, time.perf_counter()
    for sample in wds.WebDataset(urls, shardshuffle=False):
        wave, sr = sf.read(io.BytesIO(sample[ext]), dtype="int16")
        audio += len(wave) / sr
    return audio / (time.perf_counter() - start)


def audio_members(shards: Path) -> Iterator[bytes]:
    """The audio members of every shard, read with the loader's own tar reader."""
    for url in sorted(shards.glob("*.tar")):
        for _key, ext, data in tar_members(str(url)):
            if ext != "json":
                yield data


def run_decode_only_w2v(shards: Path) -> float:
    audio, start = 0.0, time.perf_counter()
    for data in audio_members(shards):
        audio += len(decode_member(data)) / 16000
    return audio / (time.perf_counter() - start)


def compare_workers(shards: Path, vocab: Vocabulary, max_workers: int) -> dict:
    results = {}
    for workers in range(max_workers + 1):
        loader = SpeechLoader(shards, LoaderConfig(max_batch_seconds=80, num_workers=workers, shuffle=True),
                              vocab=vocab)
        for _ in loader:  # warm-up epoch: worker start, numba cache, page cache
            pass
        loader.set_epoch(1)
        cpu0, audio, start = time.process_time(), 0.0, time.perf_counter()
        for batch in loader:
            audio += batch["audio_seconds"]
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        results[str(workers)] = {"audio_seconds_per_second": audio / wall,
                                 "consumer_cpu_us_per_audio_second": 1e6 * cpu / audio}
    return results


def compare_flac_decoders(shards: Path, repeats: int = 5) -> dict:
    from w2v.data.flac import decode_flac

    members = list(audio_members(shards))
    decoders = {"soundfile": lambda b: sf.read(io.BytesIO(b), dtype="int16")[0], "w2v_flac": lambda b: decode_flac(b)[0]}
    best = {name: 0.0 for name in decoders}
    for _ in range(repeats):
        for name, fn in decoders.items():
            start = time.perf_counter()
            samples = sum(len(fn(b)) for b in members)
            best[name] = max(best[name], samples / 16000 / (time.perf_counter() - start))
    return {name: {"audio_seconds_per_second": rate} for name, rate in best.items()}


def _codec(shards: Path) -> str:
    return json.loads((shards / "index.json").read_text())["codec"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="flac", choices=["flac", "wav"])
    p.add_argument("--minutes", type=float, default=30, help="minutes of audio in the shards")
    p.add_argument("--repeats", type=int, default=3, help="best of N runs per path, the paths interleaved")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "w2v-bench-loader"))
    p.add_argument("--json", default=None)
    p.add_argument("--workers", type=int, default=0, help="also time ours with 0..N DataLoader workers")
    args = p.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    shards = make_data(Path(args.work), args.minutes, args.codec)
    index = json.loads((shards / "index.json").read_text())
    vocab = Vocabulary.build(t for s in index["shards"] for t in s["texts"])
    vocab_file = Path(args.work) / "vocab.json"
    vocab.save(vocab_file)
    processor = Wav2Vec2Processor(
        feature_extractor=Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                   do_normalize=True, return_attention_mask=True),
        tokenizer=Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="[UNK]", pad_token="[PAD]",
                                       word_delimiter_token="|"))
    run_ours(shards, vocab)  # warm-up: numba compile, page cache
    setup: dict = {}
    paths = {
        "ours": lambda: run_ours(shards, vocab, setup),
        "stock": lambda: run_hf(shards, vocab, processor, stock=True),
        "soundfile_hf": lambda: run_hf(shards, vocab, processor, stock=False),
        "decode_only": lambda: run_decode_only(shards),
        "decode_only_w2v": lambda: run_decode_only_w2v(shards),
    }
    best = {name: 0.0 for name in paths}
    for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits every path
        for name, fn in paths.items():
            best[name] = max(best[name], fn())
    results = {name: {"audio_seconds_per_second": rate} for name, rate in best.items()}
    floor = results["decode_only"]["audio_seconds_per_second"]
    own_floor = results["decode_only_w2v"]["audio_seconds_per_second"]
    print(f"\nshards → batches, one core, {args.codec.upper()} shards, {index['total_seconds'] / 60:.1f} min of "
          f"audio, {index['num_samples']} utterances of {index['total_seconds'] / index['num_samples']:.1f} s; "
          f"best of {args.repeats} interleaved runs per path:")
    print(f"{'path':16} {'audio-s/s':>10} {'ours ×':>8} {'% of decode_only':>17} {'% of decode_only_w2v':>21}")
    ours = results["ours"]["audio_seconds_per_second"]
    for name, r in results.items():
        rate = r["audio_seconds_per_second"]
        print(f"{name:16} {rate:10.0f} {ours / rate:8.2f} {100 * rate / floor:16.0f}% {100 * rate / own_floor:20.0f}%")
    stock, sf_hf = (results[k]["audio_seconds_per_second"] for k in ("stock", "soundfile_hf"))
    print(f"ours: {ours / stock:.2f}x stock, {ours / sf_hf:.2f}x soundfile_hf, "
          f"{100 * ours / floor:.0f}% of decode_only")
    print(f"(ours includes building the loader and planning the epoch: {setup['setup_seconds']:.3f} s)")
    out = {**results, "codec": args.codec, "audio_seconds": index["total_seconds"], "repeats": args.repeats,
           "ours_setup_seconds": setup["setup_seconds"]}
    if args.workers:
        out["workers"] = compare_workers(shards, vocab, args.workers)
        print(f"{'workers':>8} {'audio-s/s':>10} {'consumer CPU us per audio-s':>28}")
        for n, r in out["workers"].items():
            print(f"{n:>8} {r['audio_seconds_per_second']:10.0f} {r['consumer_cpu_us_per_audio_second']:28.0f}")
    if args.codec == "flac":
        out["flac_decoders"] = decoders = compare_flac_decoders(shards)
        lib, ours_dec = (decoders[k]["audio_seconds_per_second"] for k in ("soundfile", "w2v_flac"))
        print(f"FLAC decoding alone, members in memory: soundfile {lib:.0f}, w2v.flac {ours_dec:.0f} audio-s/s "
              f"({ours_dec / lib:.2f}x)")
    # the normalise+pad kernel alone vs the HF feature extractor and a numpy loop
    kernel_json = Path(args.work) / "padding.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_padding.py"), "--json", str(kernel_json)],
                   check=True)
    out["normalize_pad"] = json.loads(kernel_json.read_text())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
