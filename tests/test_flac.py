"""The numba FLAC decoder against libsndfile, on streams from three encoders and many settings."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from w2v.data.flac import UnsupportedFlac, _streaminfo, decode_flac
from w2v.synth import speak

ENCODER_TOOLS = ("flac", "ffmpeg")

SR = 16000


def _signals(tmp_path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    speech, rate = sf.read(str(speak("Seven quiet ships sailed north before the storm.", tmp_path / "s.wav")),
                           dtype="int16")
    t = np.arange(3 * SR) / SR
    noise = rng.integers(-32768, 32768, 20000).astype(np.int16)
    return {
        "speech": speech,  # espeak's own rate: the frame headers carry it
        "quiet_speech": (speech // 200).astype(np.int16),
        "white_noise": noise,  # verbatim subframes and escaped partitions
        "silence": np.zeros(9000, np.int16),  # constant subframes
        "dc": np.full(5000, -1234, np.int16),
        "tone": (12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16),
        "wasted_bits": (rng.integers(-500, 500, 12000) << 5).astype(np.int16),
        "extremes": np.tile(np.array([-32768, 32767], np.int16), 3000),  # long unary codes
        "one_sample": np.array([77], np.int16),
        "short": (speech[:100]),
    }


ENCODERS = {
    "libsndfile": None,
    "flac -0": ["-0"],
    "flac -5": ["-5"],
    "flac -8 -e -p": ["-8", "-e", "-p"],
    "flac lpc 32": ["--lax", "-l", "32", "-b", "4096"],
    "flac blocksize 192": ["-b", "192"],
    "flac blocksize 16384 r8": ["--lax", "-b", "16384", "-r", "8"],
    "ffmpeg 12": ["-compression_level", "12"],
    "ffmpeg 0": ["-compression_level", "0"],
    "ffmpeg cholesky exact rice": ["-lpc_type", "cholesky", "-exact_rice_parameters", "1",
                                   "-prediction_order_method", "search", "-max_prediction_order", "32"],
}


def _require_encoder_tools() -> None:
    """Skip on a machine without the flac/ffmpeg commands; in CI (CI set) their absence is a failure,
    so the conformance tests cannot silently stop running."""
    missing = [tool for tool in ENCODER_TOOLS if shutil.which(tool) is None]
    if missing:
        message = f"needs the {' and '.join(missing)} command-line tools (make setup installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _encode(wave: np.ndarray, rate: int, encoder: str, tmp_path) -> bytes:
    wav, out = tmp_path / "in.wav", tmp_path / "out.flac"
    out.unlink(missing_ok=True)
    sf.write(str(wav), wave, rate, subtype="PCM_16")
    args = ENCODERS[encoder]
    if args is None:
        buf = io.BytesIO()
        sf.write(buf, wave, rate, format="FLAC", subtype="PCM_16")
        return buf.getvalue()
    _require_encoder_tools()
    if encoder.startswith("flac"):
        cmd = ["flac", "-s", "-f", *args, str(wav), "-o", str(out)]
    else:
        cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "flac", *args, str(out)]
    subprocess.run(cmd, check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    return _signals(tmp_path_factory.mktemp("flac"))


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_decode_equals_libsndfile(encoder, signals, tmp_path):
    for name, wave in signals.items():
        rate = 22050 if name in ("speech", "quiet_speech", "short") else SR
        data = _encode(wave, rate, encoder, tmp_path)
        ours, our_rate = decode_flac(data)
        ref, ref_rate = sf.read(io.BytesIO(data), dtype="int16")
        assert our_rate == ref_rate == rate, (encoder, name)
        assert ours.dtype == np.int16
        np.testing.assert_array_equal(ours, ref, err_msg=f"{encoder} / {name}")
        np.testing.assert_array_equal(ours, wave, err_msg=f"{encoder} / {name} is not lossless")


def test_other_layouts_are_unsupported_not_wrong(tmp_path):
    stereo, deep = io.BytesIO(), io.BytesIO()
    sf.write(stereo, np.zeros((1000, 2), np.int16), SR, format="FLAC", subtype="PCM_16")
    sf.write(deep, np.zeros(1000, np.int32), SR, format="FLAC", subtype="PCM_24")
    for data in (stereo.getvalue(), deep.getvalue()):
        with pytest.raises(UnsupportedFlac):
            decode_flac(data)
    with pytest.raises(ValueError, match="not a FLAC"):
        decode_flac(b"RIFF" + bytes(100))


def damaged_streams(data: bytes):
    """(what, stream) pairs: a flipped bit anywhere after the header, truncation at any point, and
    random garbage after a valid header."""
    first_frame = _streaminfo(data)[0]
    rng = np.random.default_rng(1)
    for pos in rng.integers(first_frame, len(data), 150):
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(8))
        yield f"bit flipped at byte {pos}", bytes(damaged)
    for end in [first_frame + 1, *rng.integers(first_frame, len(data) - 1, 50)]:
        yield f"truncated at byte {end}", data[:end]
    for k in range(100):
        yield f"garbage {k}", data[:first_frame] + b"\xff\xf8" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()


def damage_failures(data: bytes) -> list[str]:
    """The damaged streams that are not answered as damage: decoded as if whole, or called
    unsupported (which the loader answers by handing the member to soundfile, hiding the damage).
    Anything else raised (an IndexError from a bounds check) propagates."""
    failures = []
    for what, damaged in damaged_streams(data):
        try:
            decode_flac(damaged)
        except UnsupportedFlac:
            failures.append(f"{what}: unsupported instead of damaged")
        except ValueError:
            continue
        else:
            failures.append(f"{what}: decoded")
    return failures


def test_damage_is_an_error_never_noise_or_a_crash(signals, tmp_path):
    """Every damaged stream raises ValueError and not its subclass UnsupportedFlac (the frame CRCs
    catch what the structure does not)."""
    data = _encode(signals["speech"], 22050, "flac -5", tmp_path)
    assert damage_failures(data) == []


def test_damage_never_reads_out_of_bounds(signals, tmp_path):
    """The same damaged streams with numba's bounds checking on (and the plain bit operations, whose
    loads are indexed): an index outside an array is an IndexError there (a silent read of other
    memory without it), so a decoder that trusts a damaged length fails."""
    stream = tmp_path / "speech.flac"
    stream.write_bytes(_encode(signals["speech"], 22050, "flac -5", tmp_path))
    code = ("import sys, pathlib\n"
            "from tests.test_flac import damage_failures\n"
            "print(damage_failures(pathlib.Path(sys.argv[1]).read_bytes()))\n")
    # the plain bit operations: the intrinsic 8-byte load is one unchecked machine load
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "W2V_PLAIN_NUMBA": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, str(stream)], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# Hand-made streams (a tiny bit writer) for damage that keeps every CRC valid.


def _crc(data: bytes, poly: int, width: int) -> int:
    crc, top, mask = 0, 1 << (width - 1), (1 << width) - 1
    for byte in data:
        crc ^= byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc


class _Bits:
    def __init__(self):
        self.bits: list[int] = []

    def put(self, value: int, n: int) -> "_Bits":
        self.bits += [(value >> i) & 1 for i in range(n - 1, -1, -1)]
        return self

    def unary(self, q: int) -> "_Bits":
        self.bits += [0] * q + [1]
        return self

    def bytes(self) -> bytes:
        self.bits += [0] * (-len(self.bits) % 8)
        return np.packbits(np.array(self.bits, np.uint8)).tobytes()


def _stream(total: int, samples: int, subframe: _Bits) -> bytes:
    """fLaC + STREAMINFO declaring `total` samples + one mono 16-bit frame of `samples` samples
    (block size code 7: 16-bit size in the header) with the given subframe bits, CRCs valid."""
    info = _Bits().put(16, 16).put(65535, 16).put(0, 48).put(SR, 20).put(0, 3).put(15, 5).put(total, 36).bytes()
    head = bytes([0xFF, 0xF8, 0x70, 0x08, 0x00]) + (samples - 1).to_bytes(2, "big")
    head += bytes([_crc(head, 0x07, 8)])
    frame = head + subframe.bytes()
    return b"fLaC" + bytes([0x80, 0, 0, 34]) + info + bytes(16) + frame + _crc(frame, 0x8005, 16).to_bytes(2, "big")


def _fixed1_rice(warmup: int, residuals: list[int], k: int) -> _Bits:
    bits = _Bits().put(0, 1).put(9, 6).put(0, 1).put(warmup & 0xFFFF, 16)  # FIXED order 1, warm-up
    bits.put(1, 2).put(0, 4).put(k, 5)  # Rice method 1 (5-bit parameters), one partition
    for r in residuals:
        u = 2 * r if r >= 0 else -2 * r - 1
        bits.unary(u >> k).put(u & ((1 << k) - 1), k)
    return bits


def test_crafted_stream_decodes():
    assert decode_flac(_stream(4, 4, _fixed1_rice(1000, [5, -3, 2], 4)))[0].tolist() == [1000, 1005, 1002, 1004]


def test_samples_beyond_16_bits_are_damage_not_wrapped():
    """CRC-valid, but FIXED prediction runs past 32767: libFLAC rejects it, so must we."""
    with pytest.raises(ValueError, match="16 bits"):
        decode_flac(_stream(8, 8, _fixed1_rice(32700, [20] * 7, 5)))


def test_residuals_beyond_32_bits_are_damage():
    with pytest.raises(ValueError):
        decode_flac(_stream(4, 4, _fixed1_rice(0, [(1 << 32) + 5, 1, 2], 30)))


def test_an_impossible_sample_count_is_an_error_not_a_huge_allocation():
    with pytest.raises(ValueError, match="declares"):
        decode_flac(_stream((1 << 36) - 1, 4, _fixed1_rice(1000, [5, -3, 2], 4)))


def test_a_damaged_frame_header_is_damage_not_unsupported(signals, tmp_path):
    """A flipped channel bit in a later frame's header fails its CRC-8: an error, never the
    soundfile fallback (which would decode the other frames and hide the damage)."""
    data = _encode(signals["speech"], 22050, "libsndfile", tmp_path)
    second = data.index(b"\xff\xf8", _streaminfo(data)[0] + 10)
    damaged = bytearray(data)
    damaged[second + 3] |= 0x10
    with pytest.raises(ValueError) as err:
        decode_flac(bytes(damaged))
    assert not isinstance(err.value, UnsupportedFlac)


def test_plain_numba_fallback_decodes_the_same(signals, tmp_path):
    """W2V_PLAIN_NUMBA=1: the bit operations as plain numba code (what a numba whose extension API
    changed gets) decode every stream exactly as with the intrinsics."""
    streams = tmp_path / "streams"
    streams.mkdir()
    for name in ("speech", "white_noise", "extremes", "one_sample"):
        rate = 22050 if name == "speech" else SR
        (streams / f"{name}.flac").write_bytes(_encode(signals[name], rate, "libsndfile", tmp_path))
    code = ("import sys, pathlib, io, numpy as np, soundfile as sf\n"
            "from w2v.data import bitops\n"
            "from w2v.data.flac import decode_flac\n"
            "assert not bitops.INTRINSICS\n"
            "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.flac')):\n"
            "    data = p.read_bytes()\n"
            "    assert np.array_equal(decode_flac(data)[0], sf.read(io.BytesIO(data), dtype='int16')[0]), p\n"
            "print('ok')\n")
    # a cache of its own: numba's cache does not know which bit operations a kernel was compiled with
    env = {**os.environ, "W2V_PLAIN_NUMBA": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    proc = subprocess.run([sys.executable, "-c", code, str(streams)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
