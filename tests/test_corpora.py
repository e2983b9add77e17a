"""Every corpus layout, written by its own ecosystem's tools where they exist (datasets, lhotse, sox),
sharded by w2v-make-shards and transcribed by w2v-transcribe: inputs = written + skipped in each."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import make_tiny_model, run_command
from tests.corpora import SENTENCES, speak_to
from tests.test_sharding import read_back, skipped_lines
from w2v.shards.corpus import open_corpus
from w2v.shards.utterance import CorpusError


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Five spoken sentences, 16 kHz mono WAV: what a shard holds, so shards equal them sample for sample."""
    root = tmp_path_factory.mktemp("clips")
    (root / "tmp").mkdir()
    paths = []
    for i in range(5):
        path = root / f"clip{i}.wav"
        speak_to(SENTENCES[i], path, i, 16000, "wav", root / "tmp")
        paths.append(path)
    return paths


def samples(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="int16")[0]


def shard(src, out: Path, *args) -> dict:
    """w2v-make-shards SRC --out OUT; its index, checked: inputs = written + skipped."""
    proc = run_command("w2v-make-shards", src, "--out", out, "--workers", "2", "--no-progress", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    assert index["inputs"] == index["num_samples"] + sum(index["skipped"].values()) == (
        len(read_back(out)) + len(skipped_lines(out)))
    return index


# --- Hugging Face datasets -------------------------------------------------------------------


def _hf_dataset(clips, texts=None):
    from datasets import Audio, Dataset

    rows = {"audio": [{"bytes": p.read_bytes(), "path": p.name} for p in clips],
            "sentence": texts or [SENTENCES[i % len(SENTENCES)] for i in range(len(clips))],
            "client_id": [f"spk{i % 2}" for i in range(len(clips))]}
    return Dataset.from_dict(rows).cast_column("audio", Audio())


def test_a_hub_parquet_folder_is_sharded_sample_exact(clips, tmp_path):
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    _hf_dataset(clips[:3]).to_parquet(str(hub / "data" / "train-00000-of-00002.parquet"))
    # a second file of the split: a row without audio bytes or path, and one with an empty sentence
    from datasets import Audio, Dataset

    odd = Dataset.from_dict({"audio": [{"bytes": clips[3].read_bytes(), "path": "clip3.wav"}, None],
                             "sentence": ["  ", "no audio here"], "client_id": ["a", "b"]}).cast_column("audio", Audio())
    odd.to_parquet(str(hub / "data" / "train-00001-of-00002.parquet"))
    _hf_dataset(clips[4:]).to_parquet(str(hub / "data" / "test-00000-of-00001.parquet"))
    proc = run_command("w2v-make-shards", hub, "--out", tmp_path / "none")
    assert proc.returncode == 2 and "several splits (test, train): choose one with --split" in proc.stderr
    index = shard(hub, tmp_path / "train", "--split", "train")
    got = read_back(tmp_path / "train")
    assert set(got) == {"clip0", "clip1", "clip2"} and index["inputs"] == 5
    for i in range(3):  # the samples of the stored bytes, exactly
        assert np.array_equal(got[f"clip{i}"][0], samples(clips[i]))
        assert got[f"clip{i}"][2]["text"] == SENTENCES[i] and got[f"clip{i}"][2]["client_id"] == f"spk{i % 2}"
    assert sorted(skipped_lines(tmp_path / "train").values()) == ["empty_text", "no_audio"]
    shard(hub, tmp_path / "test", "--split", "test")
    assert set(read_back(tmp_path / "test")) == {"clip4"}


def test_a_save_to_disk_dataset_dict_is_sharded_sample_exact(clips, tmp_path):
    from datasets import DatasetDict

    folder = tmp_path / "saved"
    DatasetDict({"train": _hf_dataset(clips[:4]), "validation": _hf_dataset(clips[4:])}).save_to_disk(str(folder))
    index = shard(folder, tmp_path / "out", "--split", "train")
    got = read_back(tmp_path / "out")
    assert index["inputs"] == 4 and set(got) == {f"clip{i}" for i in range(4)}
    assert all(np.array_equal(got[f"clip{i}"][0], samples(clips[i])) for i in range(4))
    corpus = open_corpus(folder, split="validation")
    assert corpus.format == "huggingface" and corpus.count() == 1
    with pytest.raises(CorpusError, match="no split 'dev'; splits: train, validation"):
        open_corpus(folder, split="dev")


def test_a_parquet_is_read_a_few_rows_at_a_time(clips, tmp_path, monkeypatch):
    """Streamed: the rows converted to Python at once stay a handful, whatever the file holds."""
    import pyarrow.parquet as pq

    from w2v.shards.readers import huggingface

    path = tmp_path / "many.parquet"
    _hf_dataset(clips * 20).to_parquet(str(path))
    assert pq.ParquetFile(path).metadata.num_rows == 100
    largest = []
    real = huggingface.HuggingFaceCorpus._batches

    def batches(self, p):
        for batch in real(self, p):
            largest.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(huggingface.HuggingFaceCorpus, "_batches", batches)
    corpus = open_corpus(path)
    assert sum(1 for _ in corpus.utterances()) == corpus.count() == 100
    assert max(largest) <= huggingface.ROWS_AT_ONCE


# --- Kaldi -----------------------------------------------------------------------------------


def test_a_kaldi_dir_with_sox_pipes_and_segments(clips, tmp_path):
    kaldi = tmp_path / "data" / "train"
    kaldi.mkdir(parents=True)
    long = tmp_path / "long.wav"  # one recording of three clips, cut again by `segments`
    joined = np.concatenate([samples(c) for c in clips[:3]])
    sf.write(long, joined, 16000, subtype="PCM_16")
    bounds = np.cumsum([0] + [len(samples(c)) for c in clips[:3]]) / 16000
    (kaldi / "wav.scp").write_text(
        f"rec1 sox {long} -t wav - |\n"
        f"rec2 cat {clips[3]} | sox -t wav - -t wav - |\n"  # a shell pipe
        f"rec3 {clips[4]}\n"
        f"rec4 sox {tmp_path / 'missing.wav'} -t wav - |\n"  # a command that fails
        f"rec5 {clips[0]}\n")  # a recording no segment covers
    (kaldi / "segments").write_text(
        "".join(f"rec1-{k} rec1 {bounds[k]:.4f} {bounds[k + 1]:.4f}\n" for k in range(3))
        + "rec2-0 rec2 0.0 -1\n"  # Kaldi's convention: to the end
        + "rec3-0 rec3 0.2 99.0\n"  # past the end of its recording
        + "rec3-1 rec3 0.5 0.5\n"  # empty
        + "rec4-0 rec4 0.0 1.0\n"
        + "rec3-2 rec3 0.0 0.8\n")  # no transcript line
    (kaldi / "text").write_text("".join(f"rec1-{k} {SENTENCES[k]}\n" for k in range(3))
                                + f"rec2-0 {SENTENCES[3]}\nrec3-0 far\nrec3-1 empty\nrec4-0 gone\n"
                                + "rec9-0 an utterance with no segment\n")
    (kaldi / "utt2spk").write_text("rec1-0 alice\nrec1-1 bob\nrec1-2 alice\nrec2-0 carol\n")
    index = shard(kaldi, tmp_path / "out")
    got = read_back(tmp_path / "out")
    assert set(got) == {"rec1-0", "rec1-1", "rec1-2", "rec2-0"} and index["inputs"] == 10
    for k in range(3):  # each segment is its clip (cut at the rounded bounds)
        assert abs(len(got[f"rec1-{k}"][0]) - len(samples(clips[k]))) <= 2
        assert got[f"rec1-{k}"][2]["speaker"] == ("bob" if k == 1 else "alice")
    assert np.array_equal(got["rec2-0"][0], samples(clips[3]))
    assert skipped_lines(tmp_path / "out") == {"rec3-0": "segment_out_of_range", "rec3-1": "bad_segment",
                                               "rec4-0": "command_failed", "rec9-0": "missing_recording",
                                               "rec3-2": "no_transcript", "rec5": "no_transcript"}


def test_a_kaldi_dir_written_by_lhotse(clips, tmp_path):
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.kaldi import export_to_kaldi

    recordings = RecordingSet.from_recordings(Recording.from_file(c, recording_id=c.stem) for c in clips[:3])
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(id=f"{c.stem}-s", recording_id=c.stem, start=0.1, duration=0.5, text=SENTENCES[i],
                           speaker=f"spk{i}") for i, c in enumerate(clips[:3]))
    export_to_kaldi(recordings, supervisions, tmp_path / "kaldi")
    shard(tmp_path / "kaldi", tmp_path / "out")
    got = read_back(tmp_path / "out")
    assert set(got) == {f"clip{i}-s" for i in range(3)}
    assert all(np.array_equal(got[f"clip{i}-s"][0], samples(clips[i])[1600:9600]) for i in range(3))


# --- Lhotse ----------------------------------------------------------------------------------


def test_lhotse_cut_sets_and_recording_supervision_sets(clips, tmp_path):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recordings = RecordingSet.from_recordings(Recording.from_file(c, recording_id=c.stem) for c in clips)
    sups = [SupervisionSegment(id=f"{c.stem}-a", recording_id=c.stem, start=0.05, duration=0.6, text=SENTENCES[i],
                               speaker=f"spk{i}") for i, c in enumerate(clips[:4])]
    sups.append(SupervisionSegment(id="clip0-late", recording_id="clip0", start=50.0, duration=1.0, text="late"))
    supervisions = SupervisionSet.from_segments(sups)
    recordings.to_file(tmp_path / "x_recordings_train.jsonl.gz")
    supervisions.to_file(tmp_path / "x_supervisions_train.jsonl.gz")
    index = shard(tmp_path / "x_supervisions_train.jsonl.gz", tmp_path / "sets")
    got = read_back(tmp_path / "sets")
    assert index["inputs"] == 6 and set(got) == {f"clip{i}-a" for i in range(4)}
    assert skipped_lines(tmp_path / "sets") == {"clip0-late": "segment_out_of_range", "clip4": "no_supervision"}
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=SupervisionSet.from_segments(sups[:4]))
    cuts = cuts.trim_to_supervisions()
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    shard(tmp_path / "cuts.jsonl.gz", tmp_path / "cuts")
    from_cuts = read_back(tmp_path / "cuts")
    for cut in cuts:  # what Lhotse itself loads for each cut, sample for sample
        key = cut.supervisions[0].id
        lhotse_audio = np.rint(cut.load_audio()[0] * 32768).astype(np.int16)
        assert np.array_equal(from_cuts[key][0], lhotse_audio), key
        assert np.array_equal(from_cuts[key][0], got[key][0])
        assert from_cuts[key][2]["speaker"] == cut.supervisions[0].speaker


# --- SpeechBrain -----------------------------------------------------------------------------


def test_speechbrain_csv_counts_samples_and_names_rows_by_id(clips, tmp_path):
    """start/stop are samples of the file (a 1 s span stays 1 s), ID is the key, $data_root comes
    from --placeholder."""
    data = tmp_path / "corpus"
    shutil.copytree(clips[0].parent, data, ignore=shutil.ignore_patterns("tmp"))
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("ID,duration,wav,spk_id,wrd,start,stop\n"
                        "utt1,1.0,$data_root/clip0.wav,s1,HELLO THERE,0,16000\n"
                        "utt2,0.5,$data_root/clip1.wav,s2,GENERAL KENOBI,8000,16000\n"
                        "utt3,,$data_root/clip2.wav,s1,WHOLE FILE,,\n"
                        "utt4,,$data_root/clip3.wav,s1,A START ONLY,100,\n")
    proc = run_command("w2v-make-shards", csv_path, "--out", tmp_path / "no")
    assert proc.returncode == 2 and "--placeholder data_root=VALUE" in proc.stderr
    shard(csv_path, tmp_path / "out", "--placeholder", f"data_root={data}")
    got = read_back(tmp_path / "out")
    assert set(got) == {"utt1", "utt2", "utt3"}
    assert np.array_equal(got["utt1"][0], samples(clips[0])[:16000])
    assert np.array_equal(got["utt2"][0], samples(clips[1])[8000:16000])
    assert np.array_equal(got["utt3"][0], samples(clips[2]))
    assert got["utt1"][2]["text"] == "HELLO THERE" and got["utt1"][2]["spk_id"] == "s1"
    assert skipped_lines(tmp_path / "out") == {"utt4": "bad_segment"}


# --- what sharding used to lose or guess -----------------------------------------------------


def test_a_librispeech_chapter_without_its_transcript_is_listed(tmp_path):
    root, tmp = tmp_path / "dev-clean", tmp_path / "tmp"
    tmp.mkdir()
    for spk, with_text in ((100, True), (200, False)):
        chapter = root / str(spk) / "10"
        chapter.mkdir(parents=True)
        for n in range(2):
            speak_to(SENTENCES[n], chapter / f"{spk}-10-{n:04d}.flac", n, 16000, "flac", tmp)
        if with_text:
            (chapter / f"{spk}-10.trans.txt").write_text("".join(f"{spk}-10-{n:04d} {SENTENCES[n].upper()}\n"
                                                                 for n in range(2)))
    index = shard(root, tmp_path / "out")
    assert index["inputs"] == 4 and index["num_samples"] == 2
    assert skipped_lines(tmp_path / "out") == {"200-10-0000": "no_transcript", "200-10-0001": "no_transcript"}


def test_manifest_spans_keys_and_reserved_columns(clips, tmp_path):
    shutil.copy(clips[0], tmp_path / "talk.wav")
    half = sf.info(str(clips[0])).duration / 2
    # a start without an end is refused before any work, with the SpeechBrain hint when it fits
    (tmp_path / "starts.csv").write_text(f"audio,text,start,stop\ntalk.wav,hi,0,{int(half * 16000)}\n")
    proc = run_command("w2v-make-shards", tmp_path / "starts.csv", "--out", tmp_path / "o1")
    assert proc.returncode == 2 and "without 'end' or 'duration'" in proc.stderr and "speechbrain" in proc.stderr
    # a pretty-printed JSON dict of rows by ID; an `ID` column names a row of a CSV
    (tmp_path / "rows.json").write_text(json.dumps({"first": {"audio": "talk.wav", "text": "one"},
                                                    "second": {"audio": "talk.wav", "text": "two", "start": 0.0,
                                                               "end": half}}, indent=2))
    index = shard(tmp_path / "rows.json", tmp_path / "o2")
    assert sorted(read_back(tmp_path / "o2")) == ["first", "second"] and index["inputs"] == 2
    (tmp_path / "ids.csv").write_text("ID,audio,text\nmy_key,talk.wav,hello\n")
    shard(tmp_path / "ids.csv", tmp_path / "o3")
    assert list(read_back(tmp_path / "o3")) == ["my_key"]


def test_a_common_voice_tsv_of_today_keeps_its_segment_column_as_a_tag(clips, tmp_path):
    (tmp_path / "clips").mkdir()
    header = ("client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\t"
              "accents\tvariant\tlocale\tsegment\n")
    rows = []
    for i in range(2):
        sf.write(tmp_path / "clips" / f"cv{i}.flac", samples(clips[i]), 16000)
        rows.append(f"c{i}\tcv{i}.flac\ts{i}\t{SENTENCES[i]}\t\t2\t0\t\t\t\t\ten\t{'Benchmark' if i else ''}\n")
    (tmp_path / "validated.tsv").write_text(header + "".join(rows))
    shard(tmp_path / "validated.tsv", tmp_path / "out")
    got = read_back(tmp_path / "out")
    assert got["cv1"][2]["source_segment"] == "Benchmark" and "segment" not in got["cv1"][2]
    assert np.array_equal(got["cv0"][0], samples(clips[0]))


# --- w2v-transcribe reads what sharding reads ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"), {"[PAD]": 0, "[UNK]": 1, "|": 2, "a": 3, "b": 4})


def transcribe(model, *args) -> tuple[int, list[dict], str]:
    proc = run_command("w2v-transcribe", model, *args)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_transcribe_honours_spans_and_the_common_voice_layout(tiny_model, clips, tmp_path):
    shutil.copy(clips[0], tmp_path / "talk.wav")
    length = sf.info(str(clips[0])).duration
    rows = [{"audio_filepath": "talk.wav", "offset": 0.25, "duration": 0.5, "text": "x"},
            {"audio_filepath": "talk.wav", "offset": 0.0, "duration": length, "text": "x"},
            {"audio_filepath": "talk.wav", "offset": length + 5, "duration": 1.0, "text": "x"},
            {"audio_filepath": "talk.wav", "offset": 0.3, "duration": 0.0, "text": "x"}]
    (tmp_path / "segments.json").write_text("".join(json.dumps(r) + "\n" for r in rows))  # NeMo's name
    code, out, err = transcribe(tiny_model, tmp_path / "segments.json")
    assert code == 1 and len(out) == 4
    assert out[0]["duration"] == pytest.approx(0.5, abs=1e-3) and out[1]["duration"] == pytest.approx(length, abs=1e-3)
    assert out[0]["path"].endswith("talk.wav@0.250-0.750 s")
    assert out[2]["error"].startswith("segment_out_of_range") and out[3]["error"].startswith("bad_segment")
    # a Common Voice TSV: its paths are in clips/ beside it
    cv = tmp_path / "cv"
    (cv / "clips").mkdir(parents=True)
    shutil.copy(clips[1], cv / "clips" / "one.wav")
    (cv / "validated.tsv").write_text("client_id\tpath\tsentence\tsegment\nc\tone.wav\thello\t\n")
    code, out, _ = transcribe(tiny_model, cv / "validated.tsv")
    assert code == 0 and out[0]["path"] == str(cv / "clips" / "one.wav") and "error" not in out[0]


def test_transcribe_names_one_subtitle_file_per_input(tiny_model, clips, tmp_path):
    folder = tmp_path / "talks"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(clips[0], folder / "talk.wav")
    sf.write(folder / "sub" / "talk.flac", samples(clips[1]), 16000)
    sf.write(folder / "talk.ogg", samples(clips[2]), 16000)
    proc = run_command("w2v-transcribe", tiny_model, folder, folder / "talk.wav", "--format", "srt",
                       "--out", tmp_path / "subs")
    assert proc.returncode == 0, proc.stderr
    made = sorted(str(p.relative_to(tmp_path / "subs")) for p in (tmp_path / "subs").rglob("*.srt"))
    assert made == ["sub/talk.flac.srt", "talk.ogg.srt", "talk.wav.srt", "talk_2.wav.srt"]  # 4 inputs, 4 files
    proc = run_command("w2v-transcribe", tiny_model, folder, "--out", tmp_path / "two.srt")
    assert proc.returncode == 2 and "give a folder" in proc.stderr and not (tmp_path / "two.srt").exists()


def test_every_layout_detected_counts_what_it_yields(clips, tmp_path):
    """count() is what utterances() yields, in every reader (parts of a corpus are ranges of it)."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    RecordingSet.from_recordings(Recording.from_file(c, recording_id=c.stem) for c in clips).to_file(
        tmp_path / "r_recordings_x.jsonl")
    SupervisionSet.from_segments(SupervisionSegment(id=f"s{i}", recording_id=c.stem, start=0, duration=0.5,
                                                    text="t") for i, c in enumerate(clips[:2])).to_file(
        tmp_path / "r_supervisions_x.jsonl")
    _hf_dataset(clips).to_parquet(str(tmp_path / "d.parquet"))
    kaldi = tmp_path / "k"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("".join(f"r{i} {c}\n" for i, c in enumerate(clips)))
    (kaldi / "text").write_text("r0 a\nr1 b\n")
    for src, fmt, n in ((tmp_path / "r_supervisions_x.jsonl", "lhotse", 5), (tmp_path / "d.parquet", "huggingface", 5),
                        (kaldi, "kaldi", 5)):
        corpus = open_corpus(src)
        assert corpus.format == fmt and corpus.count() == sum(1 for _ in corpus.utterances()) == n


def test_a_shard_member_is_read_by_its_place_in_the_tar(tmp_path, clips):
    from w2v.shards.utterance import FileRange

    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(clips[0], arcname="k.wav")
    with tarfile.open(tmp_path / "x.tar") as tar:
        member = tar.getmember("k.wav")
    data = FileRange(str(tmp_path / "x.tar"), member.offset_data, member.size).read()
    assert np.array_equal(sf.read(io.BytesIO(data), dtype="int16")[0], samples(clips[0]))


def test_evaluate_scores_a_corpus_as_it_scores_its_shards(memorised, commonvoice, cv_shards, tmp_path):
    """w2v-evaluate --corpus reads the corpus with the sharding reader: the same utterances scored,
    the unusable ones counted by the reasons sharding gives them, the same greedy figures."""
    src, expected = commonvoice
    shards, _ = cv_shards
    figures = {}
    for flag, where in (("--corpus", src / "train.tsv"), ("--shards", shards)):
        report = tmp_path / f"{flag[2:]}.json"
        run_command("w2v-evaluate", "--model", memorised / "final", flag, where, "--json", report, check=True)
        figures[flag] = json.loads(report.read_text())
    corpus, sharded = figures["--corpus"], figures["--shards"]
    assert corpus["utterances"] == sharded["utterances"] == len(expected.written)
    assert corpus["index_utterances"] == expected.inputs
    assert sorted(corpus["excluded"].items()) == sorted(
        (reason, list(expected.skipped.values()).count(reason)) for reason in set(expected.skipped.values()))
    assert corpus["greedy"]["words"] == sharded["greedy"]["words"]
    assert corpus["greedy"]["cer"] == pytest.approx(sharded["greedy"]["cer"], abs=0.02)


def test_what_review_found_readers_must_not_lose_or_crash_on(clips, tmp_path):
    """A JSONL of segments with Lhotse-like columns is a manifest; keys stay unique whatever the
    names; Kaldi tables split on any white space; a Lhotse line that is not JSON is listed."""
    shutil.copy(clips[0], tmp_path / "a.wav")
    rows = [{"audio": "a.wav", "text": "hi", "recording_id": "r1", "start": 0.0, "duration": 0.5, "id": "a"},
            {"audio": "a.wav", "text": "hi", "id": "a"}, {"audio": "a.wav", "text": "hi", "id": "a_1"}]
    (tmp_path / "seg.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = open_corpus(tmp_path / "seg.jsonl")
    keys = [u.key for u in corpus.utterances()]
    assert corpus.format == "manifest" and len(set(keys)) == 3 and corpus.count() == 3
    kaldi = tmp_path / "k"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"r1\t{tmp_path / 'a.wav'}\n")
    (kaldi / "text").write_text("r1\thello there\n")
    [utt] = list(open_corpus(kaldi).utterances())
    assert utt.problem is None and utt.text == "hello there" and utt.audio == tmp_path / "a.wav"
    from lhotse import Recording, RecordingSet

    RecordingSet.from_recordings([Recording.from_file(clips[0], recording_id="r1")]).to_file(
        tmp_path / "x_recordings_t.jsonl")
    (tmp_path / "x_supervisions_t.jsonl").write_bytes(
        b'{"id": "s1", "recording_id": "r1", "start": 0.0, "duration": 0.5, "text": "hi"}\n\xff\xfe not json\n')
    corpus = open_corpus(tmp_path / "x_supervisions_t.jsonl")
    assert [u.problem for u in corpus.utterances()] == [None, "bad_manifest_line"] and corpus.count() == 2


def test_transcribe_takes_audio_of_any_name(tiny_model, clips, tmp_path):
    shutil.copy(clips[0], tmp_path / "recording.audio")  # a suffix no reader knows: the decoder decides
    code, out, err = transcribe(tiny_model, tmp_path / "recording.audio")
    assert code == 0 and out[0]["path"] == str(tmp_path / "recording.audio"), err
