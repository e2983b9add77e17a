"""w2v-transcribe on a folder of mixed audio, against transformers' pipeline() with the same model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, run_command
from w2v.metrics import ErrorCounts
from w2v.transcribe import Source, load_audio


@pytest.fixture(scope="module")
def mixed_folder(commonvoice, tmp_path_factory):
    """Speech as 8 kHz wav, 22.05 kHz stereo flac, 44.1 kHz wav and the corpus' own mp3, a file that
    is not audio, and a 60 s recording made by joining the utterances (chunked at 8 s)."""
    src, expected = commonvoice
    clips = sorted((src / "clips").glob("common_voice_en_[0-5].mp3"))
    out = tmp_path_factory.mktemp("mixed") / "audio"
    (out / "sub").mkdir(parents=True)
    conversions = [("a_8k.wav", ["-r", "8000", "-c", "1"]), ("b_22k_stereo.flac", ["-r", "22050", "-c", "2"]),
                   ("sub/c_44k.wav", ["-r", "44100", "-c", "1"])]
    for clip, (name, args) in zip(clips, conversions, strict=False):
        subprocess.run(["sox", str(clip), *args, str(out / name)], check=True, capture_output=True)
    (out / "d.mp3").write_bytes(clips[3].read_bytes())
    (out / "broken.wav").write_bytes(b"RIFF not really a wav file at all" * 10)
    pieces = [load_audio(Source(str(c))) for c in clips]
    gap = np.zeros(8000, np.float32)
    long = np.concatenate([x for _ in range(4) for p in pieces for x in (p, gap)])
    sf.write(out / "long.wav", long, 16000, subtype="PCM_16")
    return out


def asr_pipeline(model_dir):
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=str(model_dir), device=-1)


def test_a_mixed_folder_equals_pipeline_and_lists_the_broken_file(memorised, mixed_folder, tmp_path):
    model = memorised / "final"
    out = tmp_path / "out.jsonl"
    proc = run_command("w2v-transcribe", model, mixed_folder, "--out", out, "--chunk-seconds", "8", "--words")
    assert proc.returncode == 1, proc.stderr[-3000:]  # one input could not be read
    rows = {r["path"].removeprefix(str(mixed_folder) + "/"): r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == ["a_8k.wav", "b_22k_stereo.flac", "broken.wav", "d.mp3", "long.wav", "sub/c_44k.wav"]
    assert "error" in rows["broken.wav"] and "broken.wav: not transcribed: decode_error" in proc.stderr
    assert "5 of 6 inputs transcribed, 1 could not be read" in proc.stderr
    asr = asr_pipeline(model)
    for name in ("a_8k.wav", "b_22k_stereo.flac", "sub/c_44k.wav", "d.mp3"):
        # the same 16 kHz samples into pipeline(): batching and normalising may not change the text
        wave = load_audio(Source(str(mixed_folder / name)))
        assert rows[name]["duration"] == pytest.approx(len(wave) / 16000, abs=1e-3)
        theirs = " ".join(asr({"raw": wave, "sampling_rate": 16000})["text"].split())  # its tokenizer keeps "  "
        assert rows[name]["text"] and rows[name]["text"] == theirs, name
        words = rows[name]["words"]
        assert [w["word"] for w in words] == rows[name]["text"].split()
        assert all(0 <= w["start"] < w["end"] <= rows[name]["duration"] + 0.02 for w in words)
    # the long recording, chunked at 8 s with 4/3 s strides, against pipeline()'s own chunking
    wave = load_audio(Source(str(mixed_folder / "long.wav")))
    theirs = " ".join(asr({"raw": wave, "sampling_rate": 16000}, chunk_length_s=8)["text"].split())
    ours = rows["long.wav"]["text"]
    assert len(ours.split()) > 100 and ErrorCounts.of([theirs], [ours]).cer <= 0.02, (ours, theirs)


def test_subtitles_and_usage_errors(memorised, mixed_folder, tmp_path):
    model = memorised / "final"
    srt = tmp_path / "long.srt"
    proc = run_command("w2v-transcribe", model, mixed_folder / "long.wav", "--out", srt, "--chunk-seconds", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cues = srt.read_text().strip().split("\n\n")
    assert len(cues) > 5 and cues[0].splitlines()[0] == "1" and " --> " in cues[0].splitlines()[1]
    def seconds(clock: str) -> float:
        h, m, s = clock.replace(",", ".").split(":")
        return 3600 * int(h) + 60 * int(m) + float(s)

    spans = [[seconds(t) for t in c.splitlines()[1].split(" --> ")] for c in cues]
    assert all(a < b for a, b in spans) and all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] <= sf.info(str(mixed_folder / "long.wav")).duration + 0.02
    vtt = tmp_path / "vtt"
    proc = run_command("w2v-transcribe", model, mixed_folder / "a_8k.wav", mixed_folder / "d.mp3", "--format", "vtt",
                    "--out", vtt)
    assert proc.returncode == 0 and sorted(p.name for p in vtt.iterdir()) == ["a_8k.wav.vtt", "d.mp3.vtt"]
    assert (vtt / "d.mp3.vtt").read_text().startswith("WEBVTT\n")
    # a manifest without texts: its audio column found by name (`wav`), paths relative to it, a row
    # without audio listed with its reason
    manifest = mixed_folder / "clips.csv"
    manifest.write_text("wav,speaker\na_8k.wav,s1\nd.mp3,s2\n,s3\n")
    out = tmp_path / "manifest.jsonl"
    proc = run_command("w2v-transcribe", model, manifest, "--out", out)
    manifest.unlink()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert proc.returncode == 1 and [r["path"] for r in rows[:2]] == [str(mixed_folder / n) for n in ("a_8k.wav", "d.mp3")]
    assert rows[0]["text"] and rows[2] == {"path": "clips.csv:4", "error": "no_audio_path"}
    for args, words in (((model, tmp_path / "nothere.wav"), "no such file or folder"),
                        ((tmp_path, mixed_folder), "not a model folder"),
                        ((model, mixed_folder, "--format", "srt"), "needs --out")):
        proc = run_command("w2v-transcribe", *args)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_export_then_transcribe_decodes_with_the_tuned_lm(memorised, cv_shards, tmp_path):
    """w2v-evaluate --tune --json → w2v-export --tuned → a folder that pipeline() loads with the LM and
    that w2v-transcribe decodes with, by default, exactly as w2v-evaluate's LM decode."""
    shards, expected = cv_shards
    text = tmp_path / "lm.txt"
    text.write_text("".join(t + "\n" for _, t in expected.written.values()))
    run_command("w2v-build-lm", "--text", text, "--order", "3", "--out", tmp_path / "lm", check=True)
    dev, errors = tmp_path / "dev.json", tmp_path / "errors.jsonl"
    proc = run_command("w2v-evaluate", "--model", memorised / "final", "--shards", shards, "--lm", tmp_path / "lm",
                    "--tune", "--alphas", "0.3", "0.9", "--betas", "0.5", "2.0", "--workers", "1", "--json", dev,
                    "--errors", errors, check=True)
    tuned = json.loads(dev.read_text())["lm"]
    # the grid is printed, and a 2 x 2 grid's best is always on its edge: said on stderr
    assert "WER by alpha (rows) and beta (columns)" in proc.stdout and "a=0.3" in proc.stdout
    assert "on the grid's edge" in proc.stderr
    exported = tmp_path / "exported"
    proc = run_command("w2v-export", memorised / "final", "--lm", tmp_path / "lm", "--tuned", dev, "--out", exported)
    assert proc.returncode == 0, proc.stderr[-3000:]
    attrs = json.loads((exported / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (tuned["alpha"], tuned["beta"])
    assert asr_pipeline(exported).type == "ctc_with_lm"
    out = tmp_path / "out.jsonl"
    proc = run_command("w2v-transcribe", exported, shards, "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = {r["path"].rsplit("/", 1)[1]: r["text"] for r in map(json.loads, out.read_text().splitlines())}
    theirs = {r["key"]: r["hyp"] for r in map(json.loads, errors.read_text().splitlines())}
    assert ours == theirs and len(ours) == len(expected.written)
    again = run_command("w2v-export", memorised / "final", "--lm", tmp_path / "lm", "--tuned", dev, "--out", exported)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    typo = run_command("w2v-export", memorised / "final", "--lm", tmp_path / "lm3", "--alpha", "1", "--beta", "1",
                    "--out", tmp_path / "x")
    assert typo.returncode == 2 and "no such LM file or folder" in typo.stderr and not (tmp_path / "x").exists()


def test_a_long_recording_needs_the_memory_of_its_batches_not_of_its_length(memorised, mixed_folder, tmp_path):
    """1 and 10 minutes of speech, chunked at 8 s in batches of 16 s: the peak memory of the process
    grows by about the 10-minute recording's own samples and frames, not by what the model would need
    for 10 minutes at once (gigabytes of activations)."""
    wave = load_audio(Source(str(mixed_folder / "long.wav")))
    peaks = {}
    for minutes in (1, 10):
        path = tmp_path / f"{minutes}min.wav"
        sf.write(path, np.tile(wave, int(np.ceil(minutes * 60 * 16000 / len(wave))))[:minutes * 60 * 16000], 16000,
                 subtype="PCM_16")
        code = ("import resource, sys; from w2v.cli.transcribe import main; code = main(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
        proc = subprocess.run([sys.executable, "-c", code, str(memorised / "final"), str(path), "--out",
                               str(tmp_path / f"{minutes}.jsonl"), "--chunk-seconds", "8", "--batch-seconds", "16"],
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peaks[minutes] = int(proc.stdout.split()[-1]) / 1024  # MB
    # 9 more minutes: 35 MB of float32 samples, a few MB of frames; allow for the allocator
    assert peaks[10] - peaks[1] < 150, peaks


def test_device_cpu_and_overlapped_lm_decoding(memorised, cv_shards, tmp_path):
    """--device cpu transcribes exactly as the default; with an LM, each group's beam search runs while
    the next group is computed, and gives what decoding one group after another gives."""
    from w2v.transcribe import Inputs, Transcriber

    shards, expected = cv_shards
    text = tmp_path / "lm.txt"
    text.write_text("".join(t + "\n" for _, t in expected.written.values()))
    run_command("w2v-build-lm", "--text", text, "--order", "3", "--out", tmp_path / "lm", check=True)
    model = memorised / "final"
    outputs = {}
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        proc = run_command("w2v-transcribe", model, shards, "--lm", tmp_path / "lm", "--workers", "2", "--words",
                           "--out", tmp_path / f"{name}.jsonl", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = (tmp_path / f"{name}.jsonl").read_text()
    assert outputs["default"] == outputs["cpu"]
    transcriber = Transcriber.load(model, tmp_path / "lm", processes=2)
    try:
        sources = list(Inputs([str(shards)]))
        overlapped = list(transcriber.transcribe(sources, batch_files=2))  # 3 groups of 2
        one_after_another = []
        for group in (sources[i:i + 2] for i in range(0, len(sources), 2)):
            log_probs = transcriber.log_probs_of({k: load_audio(s) for k, s in enumerate(group)})
            one_after_another += [transcriber.decoder.decode_words(log_probs[k]) for k in range(len(group))]
    finally:
        transcriber.close()
    assert len(sources) == len(expected.written) == 6
    spf = transcriber.ratio / 16000  # seconds per frame
    assert [(r.text, [(w.word, w.start, w.end) for w in r.words]) for r in overlapped] == [
        (text, [(w, round(a * spf, 3), round(b * spf, 3)) for w, (a, b) in frames]) for text, frames in one_after_another]
    assert len({r.text for r in overlapped}) == 6 and all(r.text for r in overlapped)
    assert [r.text for r in overlapped] == [json.loads(line)["text"] for line in outputs["default"].splitlines()]


def test_a_device_this_machine_lacks_is_one_error_line(tmp_path):
    """Checked first: the model folder and the input named here do not exist."""
    import torch

    cases = [("gpu", "error: --device gpu: not a device (auto, cpu, cuda or cuda:N)")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "error: --device cuda: CUDA is not available"))
    for device, said in cases:
        proc = run_command("w2v-transcribe", tmp_path / "no-model", tmp_path / "no.wav", "--device", device)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(said) and proc.stderr.count("\n") == 1, proc.stderr


def test_precision_contexts():
    """fp32: no autocast (and on CUDA no TF32, the flag put back after); bf16: autocast on the device."""
    import contextlib

    import torch

    from w2v.transcribe import cudnn_without_tf32, forward_context

    cpu = torch.device("cpu")
    assert forward_context(cpu) is contextlib.nullcontext
    assert forward_context(torch.device("cuda:0"), "fp32") is cudnn_without_tf32
    with forward_context(cpu, "bf16")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    before = torch.backends.cudnn.allow_tf32
    with cudnn_without_tf32():
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 == before
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        forward_context(cpu, "fp16")
