"""Audio in and out: decode anything libsndfile reads, downmix, resample to 16 kHz, encode.

Decoding goes through soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3 since 1.1) from a
path, from bytes in memory, from a range of a file or from what a command writes to its stdout
(`w2v.shards.utterance`); audio libsndfile cannot read (m4a/AAC, WebM, ...) is decoded by the
`ffmpeg` command when it is installed, at its own rate and channel count. Resampling uses soxr's HQ filter by default; torchaudio's sinc
resampler (optionally on a GPU) is the alternative. `benchmarks/bench_shard.py` measures both.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from w2v.shards.utterance import COMMAND_TIMEOUT, AudioRef, Command, FileRange

TARGET_SR = 16000
RESAMPLERS = ("soxr", "torchaudio")
CODECS = ("flac", "wav")


class AudioError(Exception):
    """The input is not audio we can use; `reason` is the short tag written to skipped.jsonl."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def read_audio(src: str | AudioRef) -> tuple[np.ndarray, int]:
    """Decode audio to float32 of shape [frames, channels] and its rate: a file path, encoded bytes,
    a range of a file, or a command's stdout."""
    if isinstance(src, Command):
        src = run_command(src)
    elif isinstance(src, FileRange):
        src = src.read()
    if isinstance(src, bytes | bytearray | memoryview):
        if len(src) == 0:
            raise AudioError("empty_file")
        handle = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.is_file():
            raise AudioError("missing_file", str(path))
        if path.stat().st_size == 0:
            raise AudioError("empty_file", str(path))
        handle = path
    try:
        data, sr = sf.read(handle, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types (LibsndfileError, RuntimeError, ...)
        if shutil.which("ffmpeg") and shutil.which("ffprobe"):
            return _ffmpeg_read(handle if isinstance(handle, Path) else bytes(src))
        raise AudioError("decode_error", f"{type(exc).__name__}: {exc}") from None
    return data, sr


def run_command(command: Command) -> bytes:
    """What a command writes to stdout (Kaldi's `cmd |`), or an AudioError saying why not. A command
    that runs past the time-out is killed with every process of its pipeline."""
    try:
        proc = subprocess.Popen(command.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, cwd=command.cwd, start_new_session=True)
    except OSError as exc:  # no such program
        raise AudioError("command_failed", f"{command}: {exc}") from None
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AudioError("command_failed", f"{command}: no end after {COMMAND_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()
        raise AudioError("command_failed", f"{command}: exit status {proc.returncode}"
                         + (f": {said[-1]}" if said else ""))
    return out


def _ffmpeg_read(src: Path | bytes) -> tuple[np.ndarray, int]:
    """What libsndfile cannot read, through ffprobe (rate, channels) and ffmpeg (float32 samples),
    from a file or from bytes on their stdin."""
    name, data = (str(src), None) if isinstance(src, Path) else ("pipe:0", src)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                            "stream=sample_rate,channels", "-of", "json", name], capture_output=True, input=data)
    streams = json.loads(probe.stdout or b"{}").get("streams") if probe.returncode == 0 else None
    if not streams:
        raise AudioError("decode_error", "neither libsndfile nor ffmpeg finds an audio stream")
    rate, channels = int(streams[0]["sample_rate"]), int(streams[0]["channels"])
    done = subprocess.run(["ffmpeg", "-nostdin" if data is None else "-hide_banner", "-v", "error", "-i", name,
                           "-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-"], capture_output=True, input=data)
    if done.returncode != 0 or not done.stdout:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError("decode_error", f"ffmpeg: {detail[-1] if detail else 'no samples'}")
    return np.frombuffer(done.stdout, dtype=np.float32).reshape(-1, channels).copy(), rate


def to_mono(data: np.ndarray) -> np.ndarray:
    """[frames, channels] → [frames], averaging channels (what torchaudio/HF downmixing does)."""
    if data.ndim == 1:
        return data
    if data.shape[1] == 1:
        return data[:, 0]
    return data.mean(axis=1, dtype=np.float32)


def resample(
    wave: np.ndarray, sr_in: int, sr_out: int = TARGET_SR, method: str = "soxr", device: str = "cpu"
) -> np.ndarray:
    """Resample a mono float32 signal. A no-op when the rates already match."""
    if sr_in == sr_out:
        return wave
    if method == "soxr":
        return soxr.resample(wave, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)
    if method == "torchaudio":
        import torch
        import torchaudio.functional as F

        tensor = torch.from_numpy(np.ascontiguousarray(wave)).to(device)
        return F.resample(tensor, sr_in, sr_out).cpu().numpy().astype(np.float32, copy=False)
    raise ValueError(f"unknown resampler {method!r}; choose one of {RESAMPLERS}")


def to_int16(wave: np.ndarray) -> np.ndarray:
    """float32 → int16 as `x × 32768`, rounded and clipped (resampling can overshoot 1.0): the inverse
    of how decoders and the loader read 16-bit audio (`x / 32768`), so 16-bit audio at 16 kHz is
    copied sample for sample."""
    scaled = np.rint(wave * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def encode(wave_int16: np.ndarray, codec: str = "flac", sr: int = TARGET_SR) -> bytes:
    """Encode 16-bit mono PCM as FLAC or WAV bytes."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {CODECS}")
    buf = io.BytesIO()
    sf.write(buf, wave_int16, sr, format=codec.upper(), subtype="PCM_16")
    return buf.getvalue()
