"""Decoding one audio member of a shard (bytes in memory) into int16 mono samples at 16 kHz.

Three paths, fastest first: a 16 kHz mono 16-bit PCM WAV (what `w2v-make-shards --codec wav`
writes) is a zero-copy view of the bytes; mono 16-bit FLAC goes through `w2v.data.flac` (the
default, `flac_decoder="w2v"`) or libsndfile (`flac_decoder="soundfile"`); anything else through
soundfile. No temporary files.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from w2v.data.flac import UnsupportedFlac, decode_flac
from w2v.shards.index import SAMPLE_RATE

FLAC_DECODERS = ("w2v", "soundfile")


def pcm16_wav_view(data: bytes) -> np.ndarray | None:
    """The samples of a 16 kHz mono 16-bit PCM WAV as a zero-copy view; None for any other file.

    libsndfile costs several times more than the copy itself for such files.
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt_ok = 12, False
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            tag, channels, rate = (int.from_bytes(data[body + a:body + b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            fmt_ok = tag == 1 and channels == 1 and rate == SAMPLE_RATE and bits == 16
        elif chunk == b"data":
            if not fmt_ok:
                return None
            size = min(size, len(data) - body) // 2 * 2
            return np.frombuffer(data, dtype="<i2", count=size // 2, offset=body)
        pos = body + size + (size & 1)
    return None


def decode_member(data: bytes, flac_decoder: str = "w2v") -> np.ndarray:
    """int16 mono samples of one member; raises (ValueError, soundfile's errors) on damage."""
    view = pcm16_wav_view(data)
    if view is not None:
        return view
    wave = None
    if data[:4] == b"fLaC" and flac_decoder == "w2v":
        try:
            wave, sr = decode_flac(data)
        except UnsupportedFlac:  # stereo, 24-bit, …: a valid stream libsndfile decodes
            pass
    if wave is None:
        wave, sr = sf.read(io.BytesIO(data), dtype="int16")
    if sr != SAMPLE_RATE:
        raise ValueError(f"sample rate {sr}, expected {SAMPLE_RATE}")
    return wave if wave.ndim == 1 else wave.mean(axis=1).astype(np.int16)
