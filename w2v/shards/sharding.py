"""The sharding pipeline: corpus rows → (parallel) decode, downmix, resample, encode → tar shards.

Workers do the audio work and return encoded bytes; the main process writes shards in input
order, so keys, order and bytes are deterministic whatever `workers` is. At most `2 × workers`
small chunks are in flight, which bounds memory whatever the corpus size.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import soundfile as sf

from w2v.atomic import TMP_SUFFIX, AtomicFile
from w2v.progress import LOG_INTERVAL_SECONDS, Progress
from w2v.shards import audio
from w2v.shards.columns import COLUMNS_DIR, index_identity, write_columns
from w2v.shards.index import INDEX_NAME, SKIPPED_NAME
from w2v.shards.parts import PARTS_DIR, PLAN_NAME, Part, clear_part, mark_done, part_files, record_plan
from w2v.shards.utterance import AudioRef, Command, Corpus, FileRange, Utterance
from w2v.shards.writer import ShardWriter, write_index

# Anything shorter than this after decoding is a truncated or broken file, not speech: wav2vec2's
# conv stack needs 400 samples (25 ms) for a single frame, and no transcript fits in 0.1 s.
MIN_DECODED_SECONDS = 0.1
CHUNK = 4  # utterances per task: amortises IPC without holding much audio
# Segments of one recording listed together go to one task, so it is decoded once: up to this many.
MAX_SEGMENTS_PER_TASK = 256
# A segment may end this far past its recording (rounded end times), and is cut at the end.
SEGMENT_END_TOLERANCE = 0.05


@dataclass
class ShardOptions:
    codec: str = "flac"
    resampler: str = "soxr"
    device: str = "cpu"
    min_duration: float | None = None
    max_duration: float | None = None
    max_shard_bytes: int = 256 * 1024**2
    max_shard_samples: int = 0
    workers: int = 1


@dataclass
class Prepared:
    """The result of one utterance: audio bytes + metadata, or a skip reason."""

    key: str
    source: str
    audio: bytes | None = None
    meta: dict | None = None
    reason: str | None = None
    detail: str = ""


class DecodedRecording:
    """The last recording decoded in this process: its segments, listed together, reuse it."""

    def __init__(self):
        self.ref: AudioRef | None = None
        self.result: tuple[np.ndarray, int] | audio.AudioError | None = None

    def read(self, ref: AudioRef) -> tuple[np.ndarray, int]:
        if isinstance(ref, bytes) or ref != self.ref:  # bytes held in the corpus file: one row each
            self.ref = ref
            try:
                self.result = audio.read_audio(ref)
            except audio.AudioError as exc:
                self.result = exc
        if isinstance(self.result, audio.AudioError):
            raise self.result
        return self.result


def decode_utterance(utt: Utterance, recording: DecodedRecording | None = None) -> tuple[np.ndarray, int, int]:
    """An utterance's audio as [frames, channels] float32 at the recording's own rate, its channel
    (of a multi-channel recording) and its span only; the rate; the recording's channel count.
    `recording`: the last one decoded, reused by its segments. An AudioError says why not."""
    data, sr = (recording or DecodedRecording()).read(utt.audio)
    channels = data.shape[1]
    if utt.channel is not None and data.shape[1] > 1:  # a mono file is that channel already
        if utt.channel >= data.shape[1]:
            raise audio.AudioError("channel_out_of_range", f"channel {utt.channel} of {data.shape[1]}")
        data = data[:, utt.channel:utt.channel + 1]
    if utt.span is None:
        return data, sr, channels
    first, last = utt.span.frames(sr, len(data))
    if first >= len(data) or last > len(data) + SEGMENT_END_TOLERANCE * sr:
        raise audio.AudioError("segment_out_of_range", f"{utt.span}, but the recording is {len(data) / sr:.3f} s "
                               f"({len(data)} samples)")
    return data[first:min(last, len(data))], sr, channels


def utterance_seconds(utt: Utterance) -> float:
    """An input's length from its file header (or its span), without decoding; 0 if unknown."""
    if utt.problem or utt.audio is None or isinstance(utt.audio, Command | FileRange):
        return 0.0
    try:
        info = sf.info(io.BytesIO(utt.audio) if isinstance(utt.audio, bytes) else str(utt.audio))
    except Exception:  # noqa: BLE001 (an unreadable file is the sharder's to report)
        return 0.0
    if utt.span is not None:
        start, end = utt.span.seconds(info.samplerate)
        return min(end, info.frames / info.samplerate) - start
    return info.frames / info.samplerate


def prepare(utt: Utterance, opts: ShardOptions, recording: DecodedRecording | None = None) -> Prepared:
    """Decode, downmix, resample and encode one utterance (a segment: its span only, resampled once
    from the recording's rate), or say why it is skipped."""
    if utt.problem:
        return Prepared(utt.key, utt.source, reason=utt.problem, detail=utt.detail)
    try:
        data, sr, channels = decode_utterance(utt, recording)
    except audio.AudioError as exc:
        return Prepared(utt.key, utt.source, reason=exc.reason, detail=exc.detail)
    wave = audio.resample(audio.to_mono(data), sr, audio.TARGET_SR, opts.resampler, opts.device)
    seconds = len(wave) / audio.TARGET_SR
    detail = f"{seconds:.3f} s"
    if seconds < MIN_DECODED_SECONDS:
        return Prepared(utt.key, utt.source, reason="too_short", detail=f"{detail} after decoding (truncated?)")
    if opts.min_duration is not None and seconds < opts.min_duration:
        return Prepared(utt.key, utt.source, reason="below_min_duration", detail=detail)
    if opts.max_duration is not None and seconds > opts.max_duration:
        return Prepared(utt.key, utt.source, reason="above_max_duration", detail=detail)
    pcm = audio.to_int16(wave)
    if not pcm.any():
        return Prepared(utt.key, utt.source, reason="silent", detail="all samples are zero")
    meta = {
        **utt.meta,
        "text": utt.text,
        "duration": round(seconds, 6),
        "num_samples": len(pcm),
        "sample_rate": audio.TARGET_SR,
        "source": utt.source,
        "orig_sample_rate": sr,
        "orig_channels": channels,
        **({"channel": utt.channel} if utt.channel is not None else {}),
    }
    return Prepared(utt.key, utt.source, audio.encode(pcm, opts.codec), meta)


def _prepare_chunk(args: tuple[list[Utterance], ShardOptions]) -> list[Prepared]:
    chunk, opts = args
    recording = DecodedRecording()
    return [prepare(u, opts, recording) for u in chunk]


def _chunks(items: Iterator[Utterance], size: int) -> Iterator[list[Utterance]]:
    """Tasks of `size` utterances, extended while the next one is a segment of the same recording."""
    chunk: list[Utterance] = []
    for utt in items:
        same = chunk and utt.span is not None and utt.audio == chunk[-1].audio
        if len(chunk) >= size and not (same and len(chunk) < MAX_SEGMENTS_PER_TASK):
            yield chunk
            chunk = []
        chunk.append(utt)
    if chunk:
        yield chunk


def prepared_in_order(utterances: Iterator[Utterance], opts: ShardOptions) -> Iterator[Prepared]:
    """Prepared utterances in their order, computed by `opts.workers` processes."""
    if opts.workers <= 1:  # inline: no IPC, and an honest one-core measurement
        recording = DecodedRecording()
        for utt in utterances:
            yield prepare(utt, opts, recording)
        return
    # fork: the workers inherit imported modules, so start-up costs milliseconds.
    ctx = mp.get_context("fork")
    with ctx.Pool(opts.workers) as pool:
        pending: deque = deque()
        for chunk in _chunks(utterances, CHUNK):
            pending.append(pool.apply_async(_prepare_chunk, ((chunk, opts),)))
            if len(pending) >= 2 * opts.workers:  # backpressure keeps memory bounded
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless `overwrite`; then clear only what we write."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: pass --overwrite to replace its shards")
        for path in out.iterdir():
            ours = (INDEX_NAME, SKIPPED_NAME, PARTS_DIR, PLAN_NAME, COLUMNS_DIR)  # a parts run's files too
            if path.suffix == ".tar" or path.name.endswith(TMP_SUFFIX) or path.name in ours:
                path.unlink() if path.is_file() else shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class ShardSummary:
    inputs: int
    written: int
    skipped: dict[str, int]
    audio_seconds: float
    wall_seconds: float
    shards: int

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / max(self.wall_seconds, 1e-9)

    def text(self) -> str:
        lines = [
            f"inputs {self.inputs}: written {self.written}, skipped {sum(self.skipped.values())}",
            *(f"  skipped {reason}: {n}" for reason, n in sorted(self.skipped.items())),
            f"{self.shards} shards, {self.audio_seconds / 3600:.3f} h of audio in {self.wall_seconds:.1f} s "
            f"({self.audio_seconds_per_second:.0f} audio-seconds per second)",
        ]
        return "\n".join(lines)


def make_shards(corpus: Corpus, out: Path, opts: ShardOptions, prefix: str | None = None,
                overwrite: bool = False, progress: bool = True,
                log_interval: float = LOG_INTERVAL_SECONDS, part: Part | None = None) -> ShardSummary:
    """Shard a corpus into `out`; returns the summary. inputs = written + skipped, always.

    With `part` (K of N, w2v.shards.parts) only the K-th contiguous range of the inputs, with shard
    names of its own and its index, skipped list and completion marker under `out/parts/`; the
    folder is shared with the other parts, and running a part again replaces that part alone.
    """
    out = Path(out)
    prefix = prefix or out.resolve().name
    inputs = corpus.count()
    utterances: Iterator[Utterance] = corpus.utterances()
    if part is None:
        prepare_out_dir(out, overwrite)
        index_path, skipped_path, shard_prefix = out / INDEX_NAME, out / SKIPPED_NAME, prefix
    else:
        out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in asdict(opts).items() if k != "workers"}  # workers do not change output
        record_plan(out, part, {"num_parts": part.count, "inputs": inputs, "prefix": prefix,
                                "source": corpus.describe(), "options": settings})
        clear_part(out, prefix, part)
        (out / PARTS_DIR).mkdir(exist_ok=True)
        files = part_files(out, part)
        index_path, skipped_path, shard_prefix = files["index"], files["skipped"], f"{prefix}-{part.tag}"
        start, end = part.range(inputs)
        utterances = islice(utterances, start, end)
        inputs = (end if end is not None else inputs) - start
    writer = ShardWriter(out, shard_prefix, opts.max_shard_bytes, opts.max_shard_samples)
    skipped: Counter = Counter()
    written, seconds, started = 0, 0.0, time.perf_counter()
    skip_log = AtomicFile(skipped_path)
    bar = Progress(total=inputs, unit="utt", disable=not progress, desc="sharding" if part is None else
                   f"sharding part {part.index}/{part.count}", interval=log_interval)
    try:
        for item in prepared_in_order(utterances, opts):
            if item.reason:
                skipped[item.reason] += 1
                skip_log.file.write((json.dumps({"key": item.key, "source": item.source, "reason": item.reason,
                                                 "detail": item.detail}, ensure_ascii=False) + "\n").encode())
            else:
                writer.write(item.key, opts.codec, item.audio, item.meta)
                written += 1
                seconds += item.meta["duration"]
            bar.update(1)
            if bar.n % 64 == 0:
                bar.set_postfix(written=written, skipped=sum(skipped.values()))
        writer.close_shard()
    except BaseException:
        writer.abort()
        skip_log.abort()
        raise
    finally:
        bar.close()
    skip_log.commit()
    summary = ShardSummary(written + sum(skipped.values()), written, dict(skipped), seconds,
                           time.perf_counter() - started, len(writer.records))
    options = asdict(opts) if part is None else {k: v for k, v in asdict(opts).items() if k != "workers"}
    write_index(index_path, writer.records, {
        "name": prefix,
        "codec": opts.codec,
        "inputs": summary.inputs,
        "skipped": summary.skipped,
        "source": corpus.describe(),
        "options": options,
    })
    if part is None:  # the metadata the loader plans from, beside the index (w2v.shards.columns)
        write_columns(out / COLUMNS_DIR, (r.to_json() for r in writer.records), index_identity(str(index_path)))
    else:  # last: the part is complete only now (the merge writes the columns of the whole)
        mark_done(out, part, {"part": part.index, "inputs": summary.inputs, "written": written})
    return summary
