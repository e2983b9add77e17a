"""w2v-make-shards (w2v-make-shards) on real corpora, read back with plain tarfile/webdataset + soundfile."""

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import webdataset as wds

from tests import corpora
from tests.conftest import ROOT, run_command
from w2v.shards.corpus import open_corpus
from w2v.shards.sharding import ShardOptions, make_shards


def read_back(out: Path) -> dict[str, tuple[np.ndarray, int, dict, str]]:
    """key → (samples, rate, meta, audio extension), using nothing of w2v."""
    samples: dict[str, dict] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    result = {}
    for key, parts in samples.items():
        ext = "flac" if "flac" in parts else "wav"
        info = sf.info(io.BytesIO(parts[ext]))
        wave, sr = sf.read(io.BytesIO(parts[ext]), dtype="int16")
        assert info.channels == 1 and info.subtype == "PCM_16", (key, info)
        result[key] = (wave, sr, json.loads(parts["json"]), ext)
    return result


def skipped_lines(out: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    return {entry["key"]: entry["reason"] for entry in lines}


def check_shards(out: Path, expected: corpora.Expected, codec: str = "flac") -> dict:
    got = read_back(out)
    assert set(got) == set(expected.written)
    for key, (wave, sr, meta, ext) in got.items():
        seconds, text = expected.written[key]
        assert sr == 16000 and ext == codec
        assert meta["text"] == text  # stored unchanged
        assert abs(len(wave) / sr - seconds) <= 0.01 * seconds, (key, len(wave) / sr, seconds)
        assert meta["num_samples"] == len(wave) and meta["sample_rate"] == 16000
        assert meta["duration"] == pytest.approx(len(wave) / 16000, abs=1e-5)
        assert np.abs(wave).max() > 1000  # real speech, not silence
    assert skipped_lines(out) == expected.skipped
    index = json.loads((out / "index.json").read_text())
    # the invariant: every input is either written or reported as skipped
    assert index["inputs"] == expected.inputs == len(got) + len(skipped_lines(out))
    assert index["num_samples"] == len(got)
    listed = {k: (d, t) for s in index["shards"] for k, d, t in zip(s["keys"], s["durations"], s["texts"], strict=True)}
    assert {k: t for k, (_, t) in listed.items()} == {k: m["text"] for k, (_, _, m, _) in got.items()}
    assert all(listed[k][0] == got[k][2]["duration"] for k in got)
    assert not list(out.glob("*.tmp"))
    return index


def test_commonvoice_mp3_48k_and_32k_with_broken_clips(commonvoice, tmp_path):
    src, expected = commonvoice
    out = tmp_path / "cv-train"
    proc = run_command("w2v-make-shards", src / "train.tsv", "--out", out, "--workers", "2",
                    "--max-shard-samples", "2", check=True)
    index = check_shards(out, expected)
    assert index["num_shards"] == 3 and index["source"]["format"] == "commonvoice"
    assert [s["name"] for s in index["shards"]] == [f"cv-train-{i:06d}.tar" for i in range(3)]
    assert "skipped 6" in proc.stdout and "written 6" in proc.stdout
    # stderr is a pipe here, as a log file on a cluster: plain progress lines, no carriage returns
    assert "\r" not in proc.stderr and "sharding: 12/12 utt" in proc.stderr
    # the locale folder + --split finds the same TSV
    run_command("w2v-make-shards", src, "--split", "train", "--out", tmp_path / "again", check=True)
    assert skipped_lines(tmp_path / "again") == expected.skipped


def test_webdataset_reads_the_shards(commonvoice, tmp_path):
    src, expected = commonvoice
    out = tmp_path / "cv"
    run_command("w2v-make-shards", src, "--out", out, "--max-shard-samples", "4", check=True)
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        wave, sr = sf.read(io.BytesIO(sample["flac"]))
        seen[sample["__key__"]] = json.loads(sample["json"])["text"]
        assert sr == 16000 and wave.ndim == 1
    assert seen == {k: t for k, (_, t) in expected.written.items()}


def test_librispeech(librispeech, tmp_path):
    src, expected = librispeech
    out = tmp_path / "ls"
    run_command("w2v-make-shards", src, "--out", out, "--codec", "wav", check=True)
    index = check_shards(out, expected, codec="wav")
    assert index["source"]["format"] == "librispeech"
    meta = read_back(out)["101-2000-0001"][2]
    assert meta["speaker"] == "101" and meta["chapter"] == "2000"


def source_at_16k(path: Path) -> np.ndarray:
    """The source file read with libsndfile, down-mixed and resampled by soxr at its best quality:
    an oracle that shares no code with w2v's audio path."""
    wave, rate = sf.read(str(path), dtype="float64", always_2d=True)
    return soxr.resample(wave.mean(axis=1), rate, 16000, quality="VHQ")


def assert_same_audio(shard_wave: np.ndarray, source: np.ndarray, lossy: bool, what: str,
                      min_snr: float = 40.0) -> None:
    """The shard's int16 samples are the source's: the same length (to a sample) and, for lossless
    sources, within `min_snr` dB (two resampling filters and int16 rounding differ by less); an mp3
    is decoded by two decoders, so the same signal (correlation) is what can be asked."""
    a = shard_wave.astype(np.float64) / 32768
    assert abs(len(a) - len(source)) <= (0.005 * 16000 if lossy else 1), (what, len(a), len(source))
    n = min(len(a), len(source))
    a, b = a[:n], source[:n]
    if lossy:
        assert np.corrcoef(a, b)[0, 1] > 0.99, what
    else:
        snr = 10 * np.log10(np.sum(b**2) / np.sum((a - b) ** 2))
        assert snr > min_snr, (what, snr)


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_manifest_stereo_8k_44k(tmp_path, kind):
    expected = corpora.make_manifest(tmp_path / "src", kind)
    out = tmp_path / "out"
    run_command("w2v-make-shards", tmp_path / "src" / f"manifest.{kind}", "--out", out, check=True)
    check_shards(out, expected)
    for key, (wave, _, _, _) in read_back(out).items():  # stereo 44.1k, 8k, mp3 48k, 22.05k
        source = next((tmp_path / "src" / "audio").glob(f"{key}.*"))
        assert_same_audio(wave, source_at_16k(source), source.suffix == ".mp3", key)
    meta = read_back(out)["utt0"][2]
    assert meta["orig_channels"] == 2 and meta["orig_sample_rate"] == 44100 and meta["speaker"] == "s0"


def test_deterministic_whatever_the_worker_count(manifest_dir, tmp_path):
    src, _ = manifest_dir
    digests = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}" / "set"
        run_command("w2v-make-shards", src / "manifest.jsonl", "--out", out, "--workers", workers,
                 "--max-shard-samples", "1", check=True)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar")})
    assert digests[0] == digests[1] and len(digests[0]) == 4  # one shard per utterance: two workers share them


def test_duration_filters_are_reported_skips(manifest_dir, tmp_path):
    src, expected = manifest_dir
    durations = sorted(s for s, _ in expected.written.values())
    lo, hi = (durations[0] + durations[1]) / 2, (durations[-2] + durations[-1]) / 2
    out = tmp_path / "out"
    run_command("w2v-make-shards", src / "manifest.jsonl", "--out", out,
             "--min-duration", str(lo), "--max-duration", str(hi), check=True)
    reasons = skipped_lines(out)
    assert sorted(reasons.values()).count("below_min_duration") == 1
    assert sorted(reasons.values()).count("above_max_duration") == 1
    index = json.loads((out / "index.json").read_text())
    assert index["inputs"] == expected.inputs == index["num_samples"] + len(reasons)


def test_refuses_non_empty_output_unless_overwrite(manifest_dir, tmp_path):
    src, _ = manifest_dir
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    proc = run_command("w2v-make-shards", src / "manifest.jsonl", "--out", out)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    run_command("w2v-make-shards", src / "manifest.jsonl", "--out", out, "--overwrite", check=True)
    assert (out / "index.json").is_file() and (out / "something").is_file()


def test_structural_errors_exit_2_before_any_work(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clip": "a.wav", "text": "hi"}) + "\n")
    proc = run_command("w2v-make-shards", bad, "--out", tmp_path / "o1")
    assert proc.returncode == 2 and "no audio column" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_command("w2v-make-shards", tmp_path / "empty", "--out", tmp_path / "o2")
    assert proc.returncode == 2 and "no known layout" in proc.stderr
    proc = run_command("w2v-make-shards", tmp_path / "nothere", "--out", tmp_path / "o3")
    assert proc.returncode == 2
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_torchaudio_resampler_matches_soxr(manifest_dir, tmp_path):
    src, expected = manifest_dir
    out = tmp_path / "ta"
    run_command("w2v-make-shards", src / "manifest.jsonl", "--out", out, "--resampler", "torchaudio", check=True)
    check_shards(out, expected)
    soxr_out = tmp_path / "sx"
    run_command("w2v-make-shards", src / "manifest.jsonl", "--out", soxr_out, check=True)
    ours, theirs = read_back(out), read_back(soxr_out)
    for key in ("utt0", "utt1", "utt3"):  # down from 44.1 kHz, up from 8 kHz, down from 22.05 kHz
        source = next((src / "audio").glob(f"{key}.*"))
        # torchaudio's windowed sinc rolls off earlier than soxr's: what differs is near 8 kHz
        assert_same_audio(ours[key][0], source_at_16k(source), False, f"torchaudio {key}", min_snr=30.0)
        assert_same_audio(theirs[key][0], source_at_16k(source), False, f"soxr {key}")


def test_crash_mid_run_leaves_only_complete_shards(manifest_dir, tmp_path, monkeypatch):
    src, _ = manifest_dir
    corpus = open_corpus(src / "manifest.jsonl")
    real = corpus.utterances

    def failing():
        for i, utt in enumerate(real()):
            if i == 3:
                raise RuntimeError("disk on fire")
            yield utt

    monkeypatch.setattr(corpus, "utterances", failing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        make_shards(corpus, out, ShardOptions(max_shard_samples=2), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["out-000000.tar"]  # no temp files, no index
    with tarfile.open(out / "out-000000.tar") as tar:
        assert len(tar.getmembers()) == 4


def test_inspect_shards_report(commonvoice, tmp_path):
    src, expected = commonvoice
    out = tmp_path / "cv"
    run_command("w2v-make-shards", src, "--out", out, check=True)
    report = tmp_path / "report"
    proc = run_command("w2v-inspect-shards", out, "--n", "4", "--out", report, check=True)
    page = (report / "index.html").read_text()
    assert (report / "durations.png").stat().st_size > 1000
    players = sorted(report.glob("audio/*.wav"))
    assert len(players) == 4 and page.count("<audio") == 4
    for wav in players:
        info = sf.info(str(wav))
        assert info.samplerate == 16000 and info.channels == 1
        assert expected.written[wav.stem][1] in page  # transcript beside its player
    assert "LEFT DOUBLE QUOTATION MARK" in page  # the inventory names the symbols to normalise
    assert "6 utterances" in proc.stdout


# --- segments of long recordings (NeMo's offset/duration, or start/end) ------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Three espeak sentences joined into one recording, at 16 kHz and at 22.05 kHz, with the
    sentences' boundaries in seconds."""
    root = tmp_path_factory.mktemp("recording")
    parts, bounds, start = [], [], 0.0
    for i, text in enumerate(corpora.SENTENCES[:3]):
        part = root / f"part{i}.wav"
        seconds = corpora.speak_to(text, part, i, 16000, "wav", root)
        parts.append(str(part))
        bounds.append((round(start, 3), round(start + seconds, 3), text))
        start += seconds
    corpora.run("sox", *parts, str(root / "rec16.wav"))
    corpora.run("sox", str(root / "rec16.wav"), "-r", "22050", str(root / "rec22.wav"))
    return root, bounds


def test_segments_are_cut_resampled_once_and_decoded_once(recording, tmp_path, monkeypatch):
    from w2v.shards import audio

    root, bounds = recording
    total = sum(e - s for s, e, _ in bounds)
    rows = [{"audio_filepath": "rec16.wav", "text": "the whole", "id": "whole16"},
            {"audio_filepath": "rec22.wav", "text": "the whole", "id": "whole22"}]
    for name in ("rec16", "rec22"):
        rows += [{"audio_filepath": f"{name}.wav", "text": t, "offset": s, "duration": round(e - s, 3)}
                 for s, e, t in bounds]
    rows.append({"audio_filepath": "rec16.wav", "text": "past the end", "offset": total - 0.5, "duration": 2.0})
    rows.append({"audio_filepath": "rec16.wav", "text": "no length", "offset": 1.0, "duration": 0})
    manifest = root / "segments.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    decoded: list[str] = []
    real_read = audio.read_audio
    monkeypatch.setattr(audio, "read_audio", lambda src: decoded.append(Path(src).name) or real_read(src))
    summary = make_shards(open_corpus(manifest), tmp_path / "out", ShardOptions(), progress=False)
    assert decoded == ["rec16.wav", "rec22.wav", "rec16.wav", "rec22.wav", "rec16.wav"]  # once per run of rows
    assert summary.written == 8 and summary.skipped == {"segment_out_of_range": 1, "bad_segment": 1}
    got = read_back(tmp_path / "out")
    src22 = sf.read(root / "rec22.wav", dtype="float32")[0]
    keys = [f"rec16_{round(s * 1000):09d}" for s, _, _ in bounds]
    whole16, whole22 = got["whole16"][0], got["whole22"][0]
    for key, (s, e, text) in zip(keys, bounds, strict=True):
        wave, _, meta, _ = got[key]
        assert meta["text"] == text and meta["segment"] == {"start": s, "end": pytest.approx(e)}
        assert "offset" not in meta and meta["source"].startswith("rec16.wav@")
        # 16 kHz: no resampling, so the segment is the recording's samples, exactly
        np.testing.assert_array_equal(wave, whole16[round(s * 16000):round(e * 16000)])
        # 22.05 kHz: the span cut at the source rate, then resampled once (soxr HQ, as by hand)
        seg22 = got[key.replace("rec16", "rec22")][0]
        span = src22[round(s * 22050):round(e * 22050)]
        by_hand = np.clip(np.rint(soxr.resample(span, 22050, 16000, quality="HQ") * 32768), -32768, 32767)
        assert len(seg22) == len(by_hand) and np.abs(seg22 - by_hand).max() <= 1
        # and it is the same speech as that span of the resampled whole
        inner = slice(800, len(seg22) - 800)
        ref22 = whole22[round(s * 16000):round(s * 16000) + len(seg22)]
        assert np.corrcoef(seg22[inner], ref22[inner])[0, 1] > 0.95
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in skipped} == {"segment_out_of_range", "bad_segment"}
    assert any("but the recording is" in r["detail"] for r in skipped)


def test_segments_in_a_csv_manifest_with_start_and_end(recording, tmp_path):
    root, bounds = recording
    manifest = root / "segments.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "sentence", "start", "end"])
        writer.writerows(["rec16.wav", t, s, e] for s, e, t in bounds)
    run_command("w2v-make-shards", manifest, "--out", tmp_path / "csv", "--no-progress", check=True)
    got = read_back(tmp_path / "csv")
    assert sorted(got) == sorted(f"rec16_{round(s * 1000):09d}" for s, _, _ in bounds)
    for s, e, _ in bounds:
        assert abs(len(got[f"rec16_{round(s * 1000):09d}"][0]) - round((e - s) * 16000)) <= 1


def test_segment_bounds_that_are_not_numbers_are_bad_segments(tmp_path):
    rows = [{"audio": "a.wav", "text": "x", "offset": float("nan"), "duration": 1.0},
            {"audio": "a.wav", "text": "x", "offset": 1.0, "duration": float("inf")},
            {"audio": "a.wav", "text": "x", "start": "soon", "end": 2},
            {"audio": "a.wav", "text": "x", "start": 2.0, "end": 1.0},
            {"audio": "a.wav", "text": "x", "duration": 3.5}]  # a whole file's length: no segment
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = list(open_corpus(manifest).utterances())
    assert [u.problem for u in utts] == ["bad_segment"] * 4 + [None]
    assert utts[-1].span is None and utts[-1].meta["source_duration"] == 3.5  # the format keeps "duration" for its own


# --- one corpus, many machines: parts and a merge ---------------------------------------------------


def make_part(src: Path, out: Path, k: int, n: int = 3, **env: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "w2v.cli.make_shards", str(src), "--out", str(out),
            "--max-shard-samples", "2", "--workers", "1", *([] if env else ["--num-parts", str(n), "--part", str(k)])]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def test_parts_run_concurrently_and_merge_into_one_run(commonvoice, tmp_path):
    src, expected = commonvoice
    tsv = src / "train.tsv"
    single = tmp_path / "single"
    run_command("w2v-make-shards", tsv, "--out", single, "--max-shard-samples", "2", check=True)
    out = tmp_path / "parts"
    parts = [make_part(tsv, out, k) for k in range(3)]  # three machines at once
    assert [p.wait(timeout=300) for p in parts] == [0, 0, 0], [p.stderr.read() for p in parts]
    early = run_command("w2v-merge-shards", out)  # nothing missing: it merges
    assert early.returncode == 0 and "inputs 12 = written 6 + skipped 6" in early.stdout, early.stderr
    index = check_shards(out, expected)  # every sample and skip of the corpus, inputs = written + skipped
    assert index["parts"] == 3 and all("-p0000" in s["name"] for s in index["shards"])
    got, want = read_back(out), read_back(single)
    assert sorted(got) == sorted(want)
    for key, (wave, _sr, meta, _) in got.items():  # the same audio and metadata as one machine's run
        assert np.array_equal(wave, want[key][0]) and meta == want[key][2]
    assert skipped_lines(out) == skipped_lines(single)
    # the merged folder is a shard folder like any other: the loader reads it, training runs on it
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.yaml"),
                           "--train_shards", str(out), "--output_dir", str(tmp_path / "train"), "--max_steps", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_missing_part_stops_the_merge_and_a_part_reruns_alone(commonvoice, tmp_path):
    src, _ = commonvoice
    tsv, out = src / "train.tsv", tmp_path / "parts"
    for k in (0, 2):
        assert make_part(tsv, out, k).wait(timeout=300) == 0
    merge = run_command("w2v-merge-shards", out)
    assert merge.returncode == 2 and "1 of 3 parts are missing or unfinished: 1" in merge.stderr
    assert not (out / "index.json").exists() and not (out / "skipped.jsonl").exists()
    other = make_part(tsv, out, 1, n=4)  # a part of another split
    assert other.wait(timeout=300) == 2 and "num_parts: 3 in the plan, 4 in part 1" in other.stderr.read()
    # part 1 from the SLURM array's variables, then part 2 again after a "crash" (its marker gone)
    slurm = make_part(tsv, out, 0, SLURM_ARRAY_TASK_ID="11", SLURM_ARRAY_TASK_MIN="10", SLURM_ARRAY_TASK_COUNT="3")
    assert slurm.wait(timeout=300) == 0 and "part 1 of 3 done" in slurm.stdout.read()
    k = next(k for k in (0, 2) if list(out.glob(f"*-p{k:05d}-*.tar")))  # a part that wrote shards
    before = sorted(p.name for p in out.glob(f"*-p{k:05d}-*.tar"))
    (out / "parts" / f"p{k:05d}.done.json").unlink()
    (out / before[0]).write_bytes(b"half a shard")
    assert run_command("w2v-merge-shards", out).returncode == 2
    assert make_part(tsv, out, k).wait(timeout=300) == 0
    assert sorted(p.name for p in out.glob(f"*-p{k:05d}-*.tar")) == before  # replaced, not added to
    assert run_command("w2v-merge-shards", out).returncode == 0
    assert sum(1 for _ in read_back(out)) == 6


def test_dry_run_prints_the_parts(commonvoice):
    src, _ = commonvoice
    proc = run_command("w2v-make-shards", src / "train.tsv", "--out", "/nonexistent/never", "--num-parts", "2",
                    "--part", "0", "--dry-run", check=True)
    assert "12 inputs in 2 parts" in proc.stdout and "part 1: inputs 6..11, 6 inputs" in proc.stdout
    assert not Path("/nonexistent/never").exists()


def test_manifest_columns_json_lists_empty_inputs_and_m4a(commonvoice, tmp_path):
    """`wav,transcription` columns named by flags; an m4a (AAC, which libsndfile cannot read) decoded
    through ffmpeg; a .json list; an empty manifest refused alike whatever its format."""
    src, _ = commonvoice
    clip = src / "clips" / "common_voice_en_0.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-c:a", "aac", str(tmp_path / "b.m4a")], check=True)
    subprocess.run(["sox", str(clip), "-r", "22050", str(tmp_path / "c.wav")], check=True)
    (tmp_path / "a.mp3").write_bytes(clip.read_bytes())
    rows = [("a.mp3", "the quick brown fox"), ("b.m4a", "jumps over"), ("c.wav", "the lazy dog")]
    (tmp_path / "m.csv").write_text("wav,transcription\n" + "".join(f"{a},{t}\n" for a, t in rows))
    out = tmp_path / "out"
    run_command("w2v-make-shards", tmp_path / "m.csv", "--audio-column", "wav", "--text-column", "transcription",
             "--out", out, "--no-progress", check=True)
    got = read_back(out)
    assert {k: m["text"] for k, (_, _, m, _) in got.items()} == {"a": rows[0][1], "b": rows[1][1], "c": rows[2][1]}
    source = source_at_16k(tmp_path / "c.wav")
    assert_same_audio(got["c"][0], source, False, "c")
    assert abs(len(got["b"][0]) - len(got["a"][0])) < 0.1 * 16000  # AAC adds its priming samples, no more
    (tmp_path / "list.json").write_text(json.dumps([{"audio": a, "text": t} for a, t in rows[:2]]))
    run_command("w2v-make-shards", tmp_path / "list.json", "--out", tmp_path / "out2", "--no-progress", check=True)
    assert json.loads((tmp_path / "out2" / "index.json").read_text())["num_samples"] == 2
    (tmp_path / "header.csv").write_text("wav,transcription\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.json").write_text("[]")
    for manifest in ("header.csv", "empty.jsonl", "empty.json"):
        proc = run_command("w2v-make-shards", tmp_path / manifest, "--out", tmp_path / "o", "--no-progress")
        assert proc.returncode == 2 and "no rows" in proc.stderr, (manifest, proc.stderr)
    proc = run_command("w2v-make-shards", tmp_path / "m.csv", "--audio-column", "wave", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "no column 'wave'" in proc.stderr and "columns: wav, transcription" in proc.stderr


def test_the_shard_package_loads_nothing_of_the_loading_package():
    """w2v.shards (the format and making shards) stands alone: a tool that only makes or reads
    shards does not pull in the loader (numba kernels, torch)."""
    code = ("import pkgutil, importlib, sys, w2v.shards as s\n"
            "[importlib.import_module(f'w2v.shards.{m.name}') for m in pkgutil.iter_modules(s.__path__)]\n"
            "print(sorted(n for n in sys.modules if n.startswith('w2v.data') or n == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
