"""Small real corpora for the tests, made with espeak-ng, sox and lame in each layout users have.

Each builder returns the expected outcome: which keys must be written (with their source
duration and text) and which must be skipped, with the reason.
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from w2v.synth import speak

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore!",
    "“Curly quotes” and it's apostrophes, too.",
    "How much wood would a woodchuck chuck?",
    "Peter Piper picked a peck of pickled peppers.",
    "A journey of a thousand miles begins with one step.",
    "Numbers like twenty-two are spelled out here.",
    "Zürich and café keep their accents.",
    "Every good boy deserves fudge.",
    "Never odd or even.",
]
VOICES = ["en-us", "en-gb", "en-us+f3"]


@dataclass
class Expected:
    written: dict[str, tuple[float, str]] = field(default_factory=dict)  # key → (source seconds, text)
    skipped: dict[str, str] = field(default_factory=dict)  # key → reason

    @property
    def inputs(self) -> int:
        return len(self.written) + len(self.skipped)


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def seconds_of(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


def speak_to(text: str, out: Path, i: int, rate: int, fmt: str, tmp: Path, channels: int = 1) -> float:
    """Speak `text` and convert it to `fmt` at `rate` Hz; returns the source's duration in seconds."""
    wav = speak(text, tmp / f"raw{i}.wav", voice=VOICES[i % len(VOICES)], speed=150 + 10 * (i % 4))
    if fmt == "mp3":  # lame writes the gapless header that keeps the decoded length exact
        run("lame", "--quiet", "--resample", str(rate // 1000), "-m", "m", str(wav), str(out))
        return seconds_of(wav)
    run("sox", str(wav), "-r", str(rate), "-c", str(channels), str(out))
    return seconds_of(out)


def make_commonvoice(root: Path, n_good: int = 6) -> Expected:
    """clips/*.mp3 at 48 and 32 kHz + train.tsv, with every kind of broken input."""
    clips, tmp = root / "clips", root / "tmp"
    clips.mkdir(parents=True)
    tmp.mkdir()
    exp = Expected()
    rows: list[bytes] = [b"client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale"]

    def row(name: str, sentence: bytes) -> None:
        rows.append(b"spk%d\t%s\t%s\t2\t0\t\t\t\ten" % (len(rows) % 3, name.encode(), sentence))

    for i in range(n_good):
        name, text = f"common_voice_en_{i}.mp3", SENTENCES[i % len(SENTENCES)]
        seconds = speak_to(text, clips / name, i, 48000 if i % 2 == 0 else 32000, "mp3", tmp)
        row(name, text.encode())
        exp.written[f"common_voice_en_{i}"] = (seconds, text)
    good = clips / "common_voice_en_0.mp3"
    row("common_voice_en_missing.mp3", b"This clip does not exist.")
    exp.skipped["common_voice_en_missing"] = "missing_file"
    (clips / "common_voice_en_empty.mp3").write_bytes(b"")
    row("common_voice_en_empty.mp3", b"A zero byte file.")
    exp.skipped["common_voice_en_empty"] = "empty_file"
    (clips / "common_voice_en_garbage.mp3").write_bytes(bytes(range(256)) * 20)
    row("common_voice_en_garbage.mp3", b"Bytes that are no audio.")
    exp.skipped["common_voice_en_garbage"] = "decode_error"
    (clips / "common_voice_en_trunc.mp3").write_bytes(good.read_bytes()[:700])
    row("common_voice_en_trunc.mp3", b"A truncated file.")
    exp.skipped["common_voice_en_trunc"] = "too_short"
    (clips / "common_voice_en_notext.mp3").write_bytes(good.read_bytes())
    row("common_voice_en_notext.mp3", b"")
    exp.skipped["common_voice_en_notext"] = "empty_text"
    row("common_voice_en_badbytes.mp3", b"caf\xe9 latin-1 bytes")
    exp.skipped[f"line{len(rows)}"] = "text_decode_error"
    (root / "train.tsv").write_bytes(b"\n".join(rows) + b"\n")
    return exp


def make_librispeech(root: Path, n_speakers: int = 2, per_chapter: int = 3) -> Expected:
    """SPK/CHAP/SPK-CHAP-NNNN.flac at 16 kHz + SPK-CHAP.trans.txt (upper case, as LibriSpeech)."""
    exp, tmp, i = Expected(), root / "tmp", 0
    tmp.mkdir(parents=True)
    for spk in range(n_speakers):
        chapter = root / str(100 + spk) / "2000"
        chapter.mkdir(parents=True)
        lines = []
        for n in range(per_chapter):
            utt = f"{100 + spk}-2000-{n:04d}"
            text = SENTENCES[i % len(SENTENCES)].upper().replace(".", "").replace(",", "")
            exp.written[utt] = (speak_to(text, chapter / f"{utt}.flac", i, 16000, "flac", tmp), text)
            lines.append(f"{utt} {text}")
            i += 1
        (chapter / f"{100 + spk}-2000.trans.txt").write_text("\n".join(lines) + "\n")
    # an audio file nobody transcribed: reported, not silently ignored
    speak_to("orphan", root / "100" / "2000" / "100-2000-9999.flac", 0, 16000, "flac", tmp)
    exp.skipped["100-2000-9999"] = "no_transcript"
    return exp


def make_manifest(root: Path, kind: str = "jsonl") -> Expected:
    """A manifest (JSONL or CSV) over stereo 44.1 kHz WAV, 8 kHz WAV and 48 kHz mp3, relative paths."""
    audio_dir, tmp = root / "audio", root / "tmp"
    audio_dir.mkdir(parents=True)
    tmp.mkdir()
    exp, rows = Expected(), []
    variants = [("wav", 44100, 2), ("wav", 8000, 1), ("mp3", 48000, 1), ("wav", 22050, 1)]
    for i, (fmt, rate, channels) in enumerate(variants):
        name = f"utt{i}.{fmt}"
        text = SENTENCES[(i + 3) % len(SENTENCES)]
        seconds = speak_to(text, audio_dir / name, i, rate, fmt, tmp, channels)
        rows.append({"audio": f"audio/{name}", "text": text, "speaker": f"s{i % 2}"})
        exp.written[f"utt{i}"] = (seconds, text)
    rows.append({"audio": "audio/nothere.wav", "text": "gone"})
    exp.skipped["nothere"] = "missing_file"
    rows.append({"audio": "audio/utt0.wav", "text": "   ", "id": "blank_text"})
    exp.skipped["blank_text"] = "empty_text"
    path = root / f"manifest.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["audio", "text", "speaker", "id"])
            writer.writeheader()
            writer.writerows(rows)
    return exp
