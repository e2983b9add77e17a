"""Turn a speech corpus into 16 kHz WebDataset tar shards with an index.

    w2v-make-shards SRC --out DIR [--format auto|commonvoice|librispeech|manifest]

SRC: a Common Voice TSV (or locale folder with --split), a LibriSpeech split folder, or a
JSONL/CSV/TSV manifest with an audio/path column and a text/sentence column.
Exit codes: 0 done, 2 the source or the output folder is unusable (nothing was written).
"""

import argparse
import os
import sys

from w2v.flags import ArgumentParser
from w2v.progress import LOG_INTERVAL_SECONDS
from w2v.shards.audio import CODECS, RESAMPLERS
from w2v.shards.corpus import FORMATS, CorpusError, open_corpus, parse_placeholders
from w2v.shards.parts import Part, PartsError, part_from_environment
from w2v.shards.sharding import ShardOptions, make_shards, utterance_seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="w2v-make-shards", description=__doc__)
    p.add_argument("src", help="a corpus: Common Voice TSV or folder, LibriSpeech split folder, manifest "
                               "(JSONL/JSON/CSV/TSV, NeMo), Hugging Face parquet or save_to_disk folder, Kaldi data "
                               "dir, Lhotse cut or supervision set, SpeechBrain CSV/JSON")
    p.add_argument("--out", required=True, help="output folder for the shards, index.json and skipped.jsonl")
    p.add_argument("--format", default="auto", choices=[f for f in FORMATS if f != "audio"],
                   help="the corpus layout (default: detected)")
    p.add_argument("--split", default=None, help="the split of a Common Voice locale folder (default train) or of "
                                                 "a Hugging Face dataset with several")
    p.add_argument("--audio-column", default=None, help="the audio column (default: audio, path, audio_filepath, "
                                                       "file, file_name, filename or wav; Hugging Face: its Audio feature)")
    p.add_argument("--text-column", default=None, help="the text column (default: text, sentence, transcript, "
                                                      "transcription or normalized_text; SpeechBrain: wrd)")
    p.add_argument("--placeholder", action="append", default=None, metavar="NAME=VALUE",
                   help="SpeechBrain: the value of $NAME in the manifest's fields (e.g. data_root=/data); repeatable")
    p.add_argument("--name", default=None, help="shard file prefix (default: the output folder's name)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--codec", default="flac", choices=CODECS)
    p.add_argument("--resampler", default="soxr", choices=RESAMPLERS)
    p.add_argument("--device", default="cpu", help="torch device for --resampler torchaudio (e.g. cuda)")
    p.add_argument("--max-shard-bytes", type=float, default=256 * 1024**2, help="cut shards at this size")
    p.add_argument("--max-shard-samples", type=int, default=0, help="cut shards at this many samples (0: no cap)")
    p.add_argument("--min-duration", type=float, default=None, help="skip utterances shorter than this (s)")
    p.add_argument("--max-duration", type=float, default=None, help="skip utterances longer than this (s)")
    p.add_argument("--overwrite", action="store_true", help="replace shards in a non-empty output folder")
    p.add_argument("--num-parts", type=int, default=None,
                   help="split the inputs into this many parts, one per machine (then w2v-merge-shards DIR)")
    p.add_argument("--part", type=int, default=None, help="which part this run shards (0..N-1); default: "
                   "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, or JOB_COMPLETION_INDEX")
    p.add_argument("--dry-run", action="store_true", help="print the parts (inputs and hours each) and stop")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-interval-seconds", "--log_interval_seconds", type=float, default=LOG_INTERVAL_SECONDS,
                   help="when stderr is not a terminal: a progress line at most this often")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "cpu" and args.resampler != "torchaudio":
        print("error: --device applies to --resampler torchaudio only", file=sys.stderr)
        return 2
    if args.device != "cpu" and args.workers > 1:
        args.workers = 1  # one process owns the GPU; it is not the bottleneck there
    try:
        corpus = open_corpus(args.src, args.format, args.split, args.audio_column, args.text_column,
                             parse_placeholders(args.placeholder))
        # the dry run lists every part: --num-parts is enough for it
        part = None if args.dry_run and args.num_parts else part_from_environment(args.num_parts, args.part)
    except (CorpusError, PartsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print_plan(corpus, args.num_parts or (part.count if part else 1))
        return 0
    opts = ShardOptions(codec=args.codec, resampler=args.resampler, device=args.device,
                        min_duration=args.min_duration, max_duration=args.max_duration,
                        max_shard_bytes=int(args.max_shard_bytes), max_shard_samples=args.max_shard_samples,
                        workers=max(1, args.workers))
    print(f"{corpus.format} corpus at {args.src} → {args.out} ({opts.workers} workers, {opts.codec}, "
          f"{opts.resampler})", flush=True)  # before the progress lines on stderr, in any shared log
    try:
        summary = make_shards(corpus, args.out, opts, args.name, args.overwrite, progress=not args.no_progress,
                              log_interval=args.log_interval_seconds, part=part)
    except (FileExistsError, PartsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.text(), flush=True)
    if part is not None:
        print(f"part {part.index} of {part.count} done; when all are: w2v-merge-shards {args.out}")
    elif summary.skipped:
        print(f"skipped inputs and reasons: {os.path.join(args.out, 'skipped.jsonl')}")
    return 0


def print_plan(corpus, num_parts: int) -> None:
    """The parts a split would give: inputs and hours of audio per part (read from the headers)."""
    inputs = corpus.count()
    seconds = [0.0] * num_parts
    parts = [Part(k, num_parts) for k in range(num_parts)]
    bounds = [p.range(inputs) for p in parts]
    for position, utt in enumerate(corpus.utterances()):
        k = next(i for i, (start, end) in enumerate(bounds) if position >= start and (end is None or position < end))
        seconds[k] += utterance_seconds(utt)
    print(f"{inputs} inputs in {num_parts} parts (contiguous ranges of the listed order):")
    for part, (start, end), total in zip(parts, bounds, seconds, strict=True):
        print(f"  part {part.index}: inputs {start}..{(end if end is not None else inputs) - 1}, "
              f"{(end if end is not None else inputs) - start} inputs, {total / 3600:.2f} h")


if __name__ == "__main__":
    sys.exit(main())
