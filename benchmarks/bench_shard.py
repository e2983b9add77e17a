#!/usr/bin/env python
"""How fast does w2v-make-shards turn 48 kHz mp3/wav into 16 kHz FLAC shards, and what does it cost?

    python benchmarks/bench_shard.py [--minutes 20] [--json OUT]

1. End to end (the tool's own make_shards(): reading inputs, worker pool, tar, index) against the
   floor measured in the same run: soundfile decode + soxr HQ + FLAC encode of each file alone,
   in one loop. One worker = one core; two workers show the scaling.
2. Resamplers: soxr HQ vs torchaudio's sinc resampler, speed (one thread) and accuracy (SNR
   against an analytically resampled sine sweep).
3. FLAC vs WAV for 16 kHz speech: size, encode and decode speed.
4. A Hugging Face parquet with the audio in the file (the `Audio` feature's struct of bytes and path)
   against the same FLAC recordings as files named by a manifest: audio-seconds per second, one worker.
Prints tables and writes JSON. Synthetic espeak-ng speech; the corpus is cached in --work.
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
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from w2v.shards import audio
from w2v.shards.corpus import open_corpus
from w2v.shards.parts import Part, merge_parts
from w2v.shards.sharding import ShardOptions, make_shards
from w2v.synth import speak

TEXTS = [
    "The committee will meet again on Thursday to discuss the budget for next year.",
    "Most of the old houses along the river were built before the railway arrived.",
    "She asked whether the results could be repeated with a larger group of volunteers.",
    "A light rain fell all afternoon, and the streets were nearly empty by six o'clock.",
    "He wrote down every number twice, just to be sure that nothing had been missed.",
    "The library keeps its oldest maps in a cool room beneath the main reading hall.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"]


def make_corpus(work: Path, minutes: float, fmt: str) -> Path:
    """A manifest over ~`minutes` of mono speech files, 48 kHz (16 kHz for flac), distinct syntheses
    then copies."""
    folder = work / f"{fmt}{'16k' if fmt == 'flac' else '48k'}-{minutes:g}min"
    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    distinct = []
    for i in range(24):
        raw = speak(" ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 2)), folder / f"raw{i}.wav",
                    VOICES[i % len(VOICES)], 150 + 10 * (i % 5))
        out = folder / f"d{i}.{fmt}"
        if fmt == "mp3":
            subprocess.run(["lame", "--quiet", "--resample", "48", "-m", "m", str(raw), str(out)], check=True)
        elif fmt == "flac":  # as corpora on the Hub hold them: 16 kHz FLAC
            subprocess.run(["sox", str(raw), "-r", "16000", str(out)], check=True)
        else:
            subprocess.run(["sox", str(raw), "-r", "48000", str(out)], check=True)
        raw.unlink()
        distinct.append((out, sf.info(str(out)).duration))
    rows, total, i = [], 0.0, 0
    while total < minutes * 60:
        src, seconds = distinct[i % len(distinct)]
        name = f"u{i:05d}.{fmt}"
        os.link(src, folder / name)  # same bytes, separate files: the tool opens each
        rows.append({"audio": name, "text": TEXTS[i % len(TEXTS)]})
        total, i = total + seconds, i + 1
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def floor_rate(manifest: Path) -> float:
    """decode + soxr HQ + FLAC encode of each file alone: what the tool cannot go below."""
    folder = manifest.parent
    files = [folder / json.loads(line)["audio"] for line in manifest.read_text().splitlines()]
    total, start = 0.0, time.perf_counter()
    for path in files:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        wave = soxr.resample(data[:, 0], sr, 16000, quality="HQ")
        pcm = np.clip(np.rint(wave * 32768), -32768, 32767).astype(np.int16)
        buf = io.BytesIO()
        sf.write(buf, pcm, 16000, format="FLAC", subtype="PCM_16")
        total += len(pcm) / 16000
    return total / (time.perf_counter() - start)


def tool_rate(manifest: Path, workers: int, out: Path) -> float:
    summary = make_shards(open_corpus(manifest), out, ShardOptions(workers=workers), overwrite=True,
                          progress=False)
    return summary.audio_seconds_per_second


def bench_parts(work: Path, minutes: float, parts: int) -> dict:
    """One run over the inputs against `parts` parts run one after another plus the merge: the cost
    of splitting a corpus over machines (every part lists the whole corpus to find its range)."""
    manifest = make_corpus(work, minutes, "wav")
    corpus = open_corpus(manifest)
    one = split = float("inf")

    def whole() -> float:
        start = time.perf_counter()
        make_shards(corpus, work / "whole", ShardOptions(workers=1), overwrite=True, progress=False)
        return time.perf_counter() - start

    def in_parts() -> float:
        shutil.rmtree(work / "parts", ignore_errors=True)
        start = time.perf_counter()
        for k in range(parts):
            make_shards(corpus, work / "parts", ShardOptions(workers=1), prefix="parts", progress=False,
                        part=Part(k, parts))
        merge_parts(work / "parts")
        return time.perf_counter() - start

    for round_ in range(4):  # interleaved, the order alternating, best of 4 each
        first, second = (whole, in_parts) if round_ % 2 == 0 else (in_parts, whole)
        times = {first: first(), second: second()}
        one, split = min(one, times[whole]), min(split, times[in_parts])
    return {"one_run_seconds": one, "parts_and_merge_seconds": split, "parts": parts, "overhead": split / one - 1}


def make_parquet(manifest: Path) -> Path:
    """The manifest's recordings, their bytes inside one parquet file laid out as `datasets` writes
    the Audio feature (a struct of bytes and path), in row groups of 64."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = manifest.with_name("audio.parquet")
    if out.is_file():
        return out
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"audio": {"_type": "Audio"}, "text": {"dtype": "string", "_type": "Value"}}
    schema = pa.schema([("audio", audio_type), ("text", pa.string())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.table({"audio": [{"bytes": (manifest.parent / r["audio"]).read_bytes(), "path": r["audio"]} for r in rows],
                      "text": [r["text"] for r in rows]}, schema=schema)
    pq.write_table(table, out, row_group_size=64)
    return out


def bench_parquet(work: Path, minutes: float) -> dict:
    """Sharding from a parquet of in-file audio against the same FLAC files, one worker each,
    interleaved, best of 3."""
    manifest = make_corpus(work, minutes, "flac")
    parquet = make_parquet(manifest)
    files = parquet_rate = 0.0
    for _ in range(3):
        files = max(files, tool_rate(manifest, 1, work / "out"))
        parquet_rate = max(parquet_rate, tool_rate(parquet, 1, work / "out"))
    return {"flac_files_1_worker": files, "parquet_1_worker": parquet_rate, "parquet_vs_files": parquet_rate / files,
            "parquet_bytes": parquet.stat().st_size}


def bench_end_to_end(work: Path, minutes: float) -> dict:
    results = {}
    for fmt in ("mp3", "wav"):
        manifest = make_corpus(work, minutes, fmt)
        floor_rate(manifest)  # warm the page cache for both
        floor = one = two = 0.0
        for _ in range(2):  # interleaved, best of 2 each: a slow spell of a shared machine hits all three
            floor = max(floor, floor_rate(manifest))
            one = max(one, tool_rate(manifest, 1, work / "out"))
            two = max(two, tool_rate(manifest, 2, work / "out"))
        results[fmt] = {"floor_audio_seconds_per_second": floor, "tool_1_worker": one, "tool_2_workers": two,
                        "tool_vs_floor": one / floor, "scaling_2_workers": two / one}
    return results


def sweep(sr: int, seconds: float = 4.0, f0: float = 50.0, f1: float = 7000.0) -> tuple[np.ndarray, callable]:
    """A log sine sweep at `sr`, and the function that evaluates the same sweep at any times."""

    def at(t: np.ndarray) -> np.ndarray:
        k = np.log(f1 / f0) / seconds
        return 0.5 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)

    return at(np.arange(int(sr * seconds)) / sr).astype(np.float32), at


def bench_resamplers() -> dict:
    torch.set_num_threads(1)
    results = {}
    for sr_in in (48000, 44100, 22050):
        x, ideal_at = sweep(sr_in)
        for method in audio.RESAMPLERS:
            audio.resample(x, sr_in, 16000, method)  # warm-up (torchaudio builds its kernel)
            reps, start = 5, time.perf_counter()
            for _ in range(reps):
                y = audio.resample(x, sr_in, 16000, method)
            speed = reps * len(x) / sr_in / (time.perf_counter() - start)
            ideal = ideal_at(np.arange(len(y)) / 16000)
            edge = 1600  # 0.1 s: both resamplers' edge effects are not what we measure
            err = y[edge:-edge] - ideal[edge:-edge]
            snr = 10 * np.log10(np.mean(ideal[edge:-edge] ** 2) / np.mean(err**2))
            results[f"{method}_{sr_in}"] = {"audio_seconds_per_second": speed, "snr_db": float(snr)}
    return results


def bench_codecs(manifest: Path) -> dict:
    folder = manifest.parent
    pcms = []
    for path in sorted(folder.glob("d*.*"))[:12]:
        data, sr = audio.read_audio(path)
        pcms.append(audio.to_int16(audio.resample(audio.to_mono(data), sr)))
    seconds = sum(len(p) for p in pcms) / 16000
    results = {}
    for codec in audio.CODECS:
        start = time.perf_counter()
        encoded = [audio.encode(p, codec) for p in pcms]
        enc = seconds / (time.perf_counter() - start)
        start = time.perf_counter()
        for blob in encoded:
            sf.read(io.BytesIO(blob), dtype="int16")  # libsndfile, both codecs
        dec = seconds / (time.perf_counter() - start)
        size = sum(len(b) for b in encoded)
        results[codec] = {"bytes_per_audio_second": size / seconds, "encode_audio_seconds_per_second": enc,
                          "decode_audio_seconds_per_second": dec}
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20, help="minutes of audio per input format")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "w2v-bench-shard"))
    p.add_argument("--json", default=None)
    p.add_argument("--parts", type=int, default=4, help="parts for the split-and-merge comparison")
    p.add_argument("--only-parts", action="store_true", help="only the split-and-merge comparison")
    p.add_argument("--only-parquet", action="store_true", help="only the parquet against FLAC files comparison")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parquet = bench_parquet(work, args.minutes)
    print(f"\nSharding 16 kHz FLAC recordings ({args.minutes:g} min), one worker, audio-seconds per second:")
    print(f"{'source':36} {'audio-s/s':>10}")
    print(f"{'FLAC files named by a manifest':36} {parquet['flac_files_1_worker']:10.0f}")
    print(f"{'the same bytes in a parquet':36} {parquet['parquet_1_worker']:10.0f}")
    print(f"parquet / files: {parquet['parquet_vs_files']:.2f}")
    if args.only_parquet:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"parquet": parquet, "minutes": args.minutes}, indent=2))
        return 0
    parts = bench_parts(work, args.minutes, args.parts)
    print(f"\nOne run against {parts['parts']} parts + merge (wav, 1 worker, {args.minutes:g} min): "
          f"{parts['one_run_seconds']:.1f} s against {parts['parts_and_merge_seconds']:.1f} s "
          f"({100 * parts['overhead']:+.1f}%)")
    if args.only_parts:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"parts": parts, "minutes": args.minutes}, indent=2))
        return 0
    e2e = bench_end_to_end(work, args.minutes)
    print(f"\nEnd to end, 48 kHz mono → 16 kHz FLAC shards, audio-seconds per second ({args.minutes:g} min):")
    print(f"{'input':6} {'floor (1 core)':>15} {'tool 1 worker':>14} {'tool/floor':>11} {'2 workers':>10} {'scaling':>8}")
    for fmt, r in e2e.items():
        print(f"{fmt:6} {r['floor_audio_seconds_per_second']:15.0f} {r['tool_1_worker']:14.0f} "
              f"{r['tool_vs_floor']:11.2f} {r['tool_2_workers']:10.0f} {r['scaling_2_workers']:8.2f}")
    res = bench_resamplers()
    print("\nResamplers (one thread): speed and SNR against the ideal resampled sweep (50 Hz – 7 kHz):")
    print(f"{'resampler':20} {'audio-s/s':>10} {'SNR dB':>8}")
    for name, r in res.items():
        print(f"{name:20} {r['audio_seconds_per_second']:10.0f} {r['snr_db']:8.1f}")
    codecs = bench_codecs(make_corpus(work, args.minutes, "wav"))
    print("\n16 kHz 16-bit speech, FLAC vs WAV:")
    print(f"{'codec':6} {'KB per audio-s':>15} {'encode audio-s/s':>17} {'decode audio-s/s':>17}")
    for name, r in codecs.items():
        print(f"{name:6} {r['bytes_per_audio_second'] / 1000:15.1f} {r['encode_audio_seconds_per_second']:17.0f} "
              f"{r['decode_audio_seconds_per_second']:17.0f}")
    result = {"end_to_end": e2e, "resamplers": res, "codecs": codecs, "parts": parts, "parquet": parquet,
              "minutes": args.minutes,
              "cpu_count": os.cpu_count()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
