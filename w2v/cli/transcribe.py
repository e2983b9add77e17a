"""Transcribe audio with a trained model: files, folders, manifests, corpus layouts or shard folders.

    w2v-transcribe runs/x/final talks/ --out talks.jsonl
    w2v-transcribe runs/x/final interview.m4a --format srt --out interview.srt
    w2v-transcribe runs/x/final clips.csv --audio-column wav --lm runs/lm --alpha 0.6 --beta 1.5

Greedy decoding, or beam search with an n-gram LM (`--lm`, or the LM that `w2v-export` put in the
model folder, with its tuned weights). Any sample rate and channel count; long recordings are
chunked (`--chunk-seconds`) and stitched at frame level. One JSONL line per input: path, duration,
text (and words with their times with `--words`); `txt` writes `path<TAB>text`; `srt`/`vtt`
write subtitles (one file per input in the folder `--out` when there are several, named after the
input: `OUT/talk.wav.srt`, `OUT/sub/talk.flac.srt`, a manifest row's key). A manifest row or corpus
segment is one input: its span is transcribed, read as w2v-make-shards reads it. A file that
cannot be read is listed with its reason on stderr (and as `error` in JSONL) and counted. Exit
status: 0 when every input was transcribed, 1 when some could not be, 2 on a usage error.
`--device auto` (the default) runs the model on CUDA when torch sees a GPU, else on the CPU; with
an LM, the beam search of one group of inputs runs while the model computes the next.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from w2v.flags import ArgumentParser
from w2v.progress import LOG_INTERVAL_SECONDS, Progress
from w2v.run_folder import model_folder_kind
from w2v.shards.corpus import CorpusError, parse_placeholders
from w2v.transcribe import (
    DEVICES,
    PRECISIONS,
    InputError,
    Inputs,
    Result,
    Transcriber,
    forward_context,
    resolve_device,
)

FORMATS = ("jsonl", "txt", "srt", "vtt")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="w2v-transcribe", description=__doc__.split("\n\n")[0], epilog=__doc__)
    p.add_argument("model", help="a model folder (train.py's final/ or best/, one made by w2v-export) or a "
                                 "checkpoint (OUTPUT_DIR/checkpoints/step-N)")
    p.add_argument("inputs", nargs="+", help="audio files, folders, manifests (.jsonl/.json/.csv/.tsv), corpus "
                                             "layouts w2v-make-shards reads, or shard folders")
    p.add_argument("--out", default=None, help="output file (default: stdout), or a folder for srt/vtt of many inputs")
    p.add_argument("--format", default=None, choices=FORMATS, help="default: from --out's suffix, else jsonl")
    p.add_argument("--words", action="store_true", help="JSONL: each word with its start and end in seconds")
    p.add_argument("--lm", default=None, help="a w2v-build-lm folder or ARPA file; 'none': greedy even if the "
                                             "model folder holds an LM")
    p.add_argument("--alpha", type=float, default=None, help="LM weight (default: the exported one, else 0.5)")
    p.add_argument("--beta", type=float, default=None, help="word bonus (default: the exported one, else 1.0)")
    p.add_argument("--beam-width", type=int, default=64)
    p.add_argument("--audio-column", default=None, help="the manifest column that names the audio")
    p.add_argument("--split", default=None, help="the split of a corpus layout with several (Hugging Face)")
    p.add_argument("--placeholder", action="append", default=None, metavar="NAME=VALUE",
                   help="SpeechBrain manifests: the value of $NAME in their fields; repeatable")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="longer recordings are chunked")
    p.add_argument("--stride-seconds", type=float, default=None, help="overlap at each side of a cut "
                                                                      "(default: chunk / 6)")
    p.add_argument("--batch-seconds", type=float, default=160.0, help="padded audio per forward pass")
    p.add_argument("--adapter-lang", "--adapter_lang", default=None, metavar="CODE",
                   help="an MMS model: use this language's adapters and head (adapter.CODE.safetensors)")
    p.add_argument("--device", default="auto", help=f"where the model runs: {DEVICES} (default: auto, CUDA when "
                                                    "torch sees a GPU, else the CPU)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="the forward's precision (default fp32); bf16 or fp16 run it under autocast")
    p.add_argument("--workers", type=int, default=None, help="beam-search threads (default: all cores)")
    p.add_argument("--log-interval-seconds", type=float, default=LOG_INTERVAL_SECONDS,
                   help="when stderr is not a terminal: a progress line at most this often")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)  # first: a device this machine lacks costs no reading or loading
        forward_context(device, args.precision)  # a ValueError when the device cannot run that precision
        sources = Inputs(args.inputs, args.audio_column, args.split, parse_placeholders(args.placeholder))
        fmt, out = check_args(args, len(sources))
        transcriber = Transcriber.load(args.model, args.lm, args.alpha, args.beta, args.beam_width,
                                       args.workers or os.cpu_count() or 1, device,
                                       chunk_seconds=args.chunk_seconds, stride_seconds=args.stride_seconds,
                                       batch_seconds=args.batch_seconds, precision=args.precision,
                                       adapter_lang=args.adapter_lang)
    except (InputError, CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if transcriber.decoder is not None and (note := transcriber.decoder.ready_note()):
        print(note, file=sys.stderr)
    failed = 0
    writer = Writer(fmt, out, several=len(sources) > 1, words=args.words)
    try:
        results = transcriber.transcribe(sources)
        for result in Progress(results, total=len(sources), desc="transcribing", unit="file",
                               interval=args.log_interval_seconds):
            if result.error:
                failed += 1
                print(f"{result.path}: not transcribed: {result.error}", file=sys.stderr)
            writer.write(result)
    finally:
        writer.close()
        transcriber.close()
    print(f"{len(sources) - failed} of {len(sources)} inputs transcribed"
          + (f", {failed} could not be read (listed above)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def check_args(args: argparse.Namespace, inputs: int) -> tuple[str, Path | None]:
    """The output format and path, and the model folder, checked before any audio is read."""
    model_folder_kind(args.model)  # a ValueError that says what the folder lacks
    out = Path(args.out) if args.out else None
    fmt = args.format or (out.suffix.lstrip(".") if out is not None and out.suffix.lstrip(".") in FORMATS else "jsonl")
    if fmt in ("srt", "vtt") and out is None:
        raise InputError(f"--format {fmt} needs --out (a file, or a folder for several inputs)")
    if fmt in ("srt", "vtt") and inputs > 1 and out.suffix.lower() == f".{fmt}":
        raise InputError(f"--out {out}: {inputs} inputs make {inputs} subtitle files: give a folder (a name "
                         f"without .{fmt}); each file is named after its input")
    return fmt, out


class Writer:
    """Results to stdout or --out in the chosen format; subtitles one file per input in a folder."""

    def __init__(self, fmt: str, out: Path | None, several: bool, words: bool):
        self.fmt, self.out, self.words = fmt, out, words
        self.folder = out if fmt in ("srt", "vtt") and (several or (out is not None and out.is_dir())) else None
        self.handle: TextIO | None = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        elif out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(out, "w", encoding="utf-8")  # noqa: SIM115  (closed in close())
        else:
            self.handle = sys.stdout

    def write(self, result: Result) -> None:
        if self.fmt == "jsonl":
            row: dict = {"path": result.path}
            if result.error:
                row["error"] = result.error
            else:
                row.update(duration=round(result.duration, 3), text=result.text)
                if self.words:
                    row["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in result.words]
            self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif result.error:
            return
        elif self.fmt == "txt":
            self.handle.write(f"{result.path}\t{result.text}\n")
        elif self.folder is not None:  # OUT/<the input's unique name>.srt: talk.wav.srt, sub/talk.flac.srt
            target = self.folder / f"{result.name}.{self.fmt}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(subtitles(result, self.fmt), encoding="utf-8")
        else:
            self.handle.write(subtitles(result, self.fmt))
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None and self.handle is not sys.stdout:
            self.handle.close()


def subtitles(result: Result, fmt: str, max_words: int = 12, max_gap: float = 1.0) -> str:
    """SRT or WebVTT cues of up to `max_words` words, a new cue after a pause of `max_gap` seconds."""
    cues, cue = [], []
    for word in result.words:
        if cue and (len(cue) == max_words or word.start - cue[-1].end > max_gap):
            cues.append(cue)
            cue = []
        cue.append(word)
    if cue:
        cues.append(cue)
    sep = "," if fmt == "srt" else "."
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    for n, cue in enumerate(cues, start=1):
        if fmt == "srt":
            lines.append(str(n))
        lines.append(f"{_clock(cue[0].start, sep)} --> {_clock(cue[-1].end, sep)}")
        lines += [" ".join(w.word for w in cue), ""]
    return "\n".join(lines) + ("\n" if lines else "")


def _clock(seconds: float, sep: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


if __name__ == "__main__":
    sys.exit(main())
