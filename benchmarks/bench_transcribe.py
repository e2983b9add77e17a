#!/usr/bin/env python
"""Transcribing a folder: w2v-transcribe against a transformers pipeline() loop, same model, same files.

    python benchmarks/bench_transcribe.py [--files 60] [--long 2] [--repeats 2] [--json OUT]

The folder: `--files` espeak-ng utterances of 3-10 s (16 kHz wav) and `--long` recordings of about
two minutes (utterances joined), cached in --work. The model: the demo config (configs/demo.yaml,
3.6 M parameters), randomly initialised and saved as train.py saves one (the speed does not depend
on the weights). Each path runs end to end in its own process, model loading and output included:

- `ours`: `w2v-transcribe MODEL FOLDER --out OUT.jsonl` (chunks of 30 s, batches of up to 160 s of
  padded audio, greedy decoding);
- `pipeline_loop`: `pipeline("automatic-speech-recognition", model=MODEL)` called on each file in
  turn with `chunk_length_s=30` (what the transformers docs show for long audio), writing the same
  JSONL.

The paths run `--repeats` times, interleaved; the table gives each one's median wall time and
audio seconds per wall second, and the CER between the two outputs (a check that both read the
same audio; `tests/test_transcribe.py` checks equal texts with a trained model).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from w2v.metrics import ErrorCounts

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "The committee will meet again on Thursday to discuss the budget for the coming year.",
    "Most of the old houses along the river were built long before the railway arrived.",
    "She asked whether the results could be repeated with a larger group of volunteers.",
    "A light rain fell all afternoon, and by six the streets of the town were nearly empty.",
    "He wrote down every number twice, just to be sure that nothing had been missed.",
    "The library keeps its oldest maps in a cool dark room beneath the reading hall.",
    "Nobody expected the small bakery on the corner to win the national prize.",
    "They walked to the harbour.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"]

PIPELINE_LOOP = """
import json, sys
from pathlib import Path
from transformers import pipeline
model, folder, out = sys.argv[1:4]
asr = pipeline("automatic-speech-recognition", model=model, device=-1)
with open(out, "w") as handle:
    for path in sorted(p for p in Path(folder).rglob("*.wav")):
        text = asr(str(path), chunk_length_s=30)["text"]
        handle.write(json.dumps({"path": str(path), "text": " ".join(text.split())}) + "\\n")
"""


def make_folder(work: Path, files: int, long: int) -> tuple[Path, float]:
    from w2v.synth import speak

    folder = work / f"audio-{files}-{long}"
    if not (folder / "done").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        waves = []
        for i in range(files):
            wav = speak(SENTENCES[i % len(SENTENCES)], folder / f"u{i:04d}.wav", VOICES[i % 4], 130 + 7 * (i % 6))
            waves.append(sf.read(str(wav), dtype="float32")[0])
        for k in range(long):
            joined, seconds = [], 0.0
            while seconds < 120:
                piece = waves[len(joined) % len(waves)]
                joined += [piece, np.zeros(4000, np.float32)]
                seconds += (len(piece) + 4000) / 16000
            sf.write(folder / f"long{k}.wav", np.concatenate(joined), 16000, subtype="PCM_16")
        (folder / "done").write_text("")
    audio = sum(sf.info(str(p)).duration for p in folder.glob("*.wav"))
    return folder, audio


def make_model(work: Path) -> Path:
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    from w2v.text import Vocabulary

    folder = work / "model"
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab = Vocabulary.build(SENTENCES)
    vocab.save(folder / "vocab.json")
    mc = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["model_config"]
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**mc, vocab_size=len(vocab), pad_token_id=vocab.pad_id))
    model.save_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=mc.get("feat_extract_norm") == "layer")
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{done.stderr[-3000:]}")
    return seconds


def texts(path: Path) -> dict[str, str]:
    return {r["path"]: r["text"] for r in map(json.loads, path.read_text().splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--long", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "w2v-bench-transcribe"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.work)
    folder, audio = make_folder(work, args.files, args.long)
    model = make_model(work)
    outs = {"ours": work / "ours.jsonl", "pipeline_loop": work / "pipeline.jsonl"}
    commands = {
        "ours": [sys.executable, "-m", "w2v.cli.transcribe", str(model), str(folder), "--out",
                 str(outs["ours"])],
        "pipeline_loop": [sys.executable, "-c", PIPELINE_LOOP, str(model), str(folder), str(outs["pipeline_loop"])],
    }
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits both
        for name, cmd in commands.items():
            runs[name].append(timed(cmd))
    ours, theirs = texts(outs["ours"]), texts(outs["pipeline_loop"])
    # a random model's frames are near ties, which float rounding in normalisation may flip: the
    # agreement is a check that both transcribed the same audio, not a quality figure
    agreement = ErrorCounts.of([theirs[k] for k in sorted(theirs)], [ours.get(k, "") for k in sorted(theirs)]).cer
    results = {"files": args.files + args.long, "audio_seconds": audio, "repeats": args.repeats,
               "cer_between_the_two": agreement, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    print(f"\n{args.files} utterances of 3-10 s and {args.long} recordings of ~2 min ({audio / 60:.1f} min of audio), "
          f"demo model, CPU; median of {args.repeats} interleaved runs; CER between the two outputs "
          f"{100 * agreement:.1f}% (a random model: near-tie frames)")
    print(f"| {'path':14} | {'seconds':>8} | {'audio-s/s':>9} | {'x pipeline':>10} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 11}|{'-' * 12}|")
    base = float(np.median(runs["pipeline_loop"]))
    for name, seconds in runs.items():
        median = float(np.median(seconds))
        results[name] = {"seconds": median, "runs": seconds, "audio_seconds_per_second": audio / median}
        print(f"| {name:14} | {median:8.1f} | {audio / median:9.1f} | {base / median:10.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
