"""The streaming loader on real tar shards: HF equality, rank/worker splits, resume, bad shards."""

import io
import json
import os
import shutil
import tarfile
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

from benchmarks.baselines import DataCollatorCTCWithPadding
from tests.conftest import run_command
from w2v.data.loader import LoaderConfig, SpeechLoader
from w2v.data.plan import output_frames
from w2v.shards.index import read_index
from w2v.shards.spec import expand_spec, select_shards
from w2v.shards.tar import iter_tar_samples
from w2v.text import Vocabulary

CONV_KERNEL, CONV_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


def vocab_for(shard_dir) -> Vocabulary:
    index = read_index(shard_dir)
    return Vocabulary.build(t for s in index["shards"] for t in s["texts"])


def loader(shard_dir, vocab, **kw) -> SpeechLoader:
    rank, world, index = kw.pop("rank", 0), kw.pop("world_size", 1), kw.pop("index", None)
    cfg = LoaderConfig(**{"max_batch_seconds": 8.0, "shuffle_buffer": 3, **kw})
    return SpeechLoader(shard_dir, cfg, vocab=vocab, rank=rank, world_size=world,
                        conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE, index=index)


def raw_audio(shard_dir) -> dict[str, np.ndarray]:
    """key → float32 samples, decoded with soundfile alone."""
    out = {}
    for shard in sorted(shard_dir.glob("*.tar")):
        for key, parts in iter_tar_samples(shard):
            out[key] = sf.read(io.BytesIO(parts["flac"]), dtype="float32")[0]
    return out


def test_batches_equal_the_hf_feature_extractor_and_collator(cv_shards, tmp_path):
    shard_dir, expected = cv_shards
    vocab = vocab_for(shard_dir)
    vocab.save(tmp_path / "vocab.json")
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    collator = DataCollatorCTCWithPadding(Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer))
    audio = raw_audio(shard_dir)
    checked = 0
    for batch in loader(shard_dir, vocab, max_batch_seconds=12.0):
        features = [{"input_values": extractor(audio[k], sampling_rate=16000)["input_values"][0],
                     "labels": tokenizer(vocab.normalizer(t))["input_ids"]}
                    for k, t in zip(batch["keys"], batch["texts"], strict=True)]
        ref = collator(features)
        assert batch["input_values"].shape == ref["input_values"].shape
        torch.testing.assert_close(batch["input_values"], ref["input_values"], atol=1e-5, rtol=0)
        assert torch.equal(batch["attention_mask"].long(), ref["attention_mask"])
        assert torch.equal(batch["labels"], ref["labels"])
        checked += len(batch["keys"])
    assert checked == len(expected.written)
    assert max(len(b["keys"]) for b in loader(shard_dir, vocab, max_batch_seconds=12.0)) > 1


def test_group_norm_models_get_no_attention_mask(cv_shards):
    shard_dir, _ = cv_shards
    batch = next(iter(loader(shard_dir, vocab_for(shard_dir), return_attention_mask=False)))
    assert "attention_mask" not in batch
    lengths = batch["input_lengths"]
    for row, n in enumerate(lengths.tolist()):  # padding is exact zeros
        assert torch.all(batch["input_values"][row, n:] == 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_two_workers_three_shards(cv_shards, workers):
    shard_dir, expected = cv_shards
    assert len(list(shard_dir.glob("*.tar"))) == 3
    vocab = vocab_for(shard_dir)
    per_rank, steps = [], []
    for rank in range(2):
        ld = loader(shard_dir, vocab, rank=rank, world_size=2, num_workers=workers, max_batch_seconds=7.0)
        keys = []
        batches = list(ld)
        for b in batches:
            keys += b["keys"]
        per_rank.append(keys)
        steps.append((len(batches), len(ld)))
    assert steps[0] == steps[1] and steps[0][0] == steps[0][1]  # equal step counts, as announced
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint
    assert sorted(per_rank[0] + per_rank[1]) == sorted(expected.written)  # each sample exactly once


def test_epochs_reshuffle_deterministically(cv_shards):
    shard_dir, _ = cv_shards
    vocab = vocab_for(shard_dir)
    orders = []
    for _ in range(2):
        ld = loader(shard_dir, vocab, max_batch_seconds=4.0)
        epochs = []
        for epoch in range(3):
            ld.set_epoch(epoch)
            epochs.append([k for b in ld for k in b["keys"]])
        orders.append(epochs)
    assert orders[0] == orders[1]  # same seed, same batches
    assert len({tuple(e) for e in orders[0]}) > 1  # but epochs differ


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_the_remaining_batches(cv_shards, workers):
    shard_dir, _ = cv_shards
    vocab = vocab_for(shard_dir)
    full = list(loader(shard_dir, vocab, num_workers=workers, max_batch_seconds=4.0))
    assert len(full) >= 4
    first = loader(shard_dir, vocab, num_workers=workers, max_batch_seconds=4.0)
    stream = iter(first)
    for _ in range(3):
        next(stream)
    state = first.state_dict()
    resumed = loader(shard_dir, vocab, num_workers=workers, max_batch_seconds=4.0)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for a, b in zip(rest, full[3:], strict=True):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["input_values"], b["input_values"]) and torch.equal(a["labels"], b["labels"])
    with pytest.raises(ValueError, match="every old rank"):  # one rank's state of a 2-rank run
        loader(shard_dir, vocab, num_workers=workers).load_state_dict({**state, "world_size": 2})
    with pytest.raises(ValueError, match="seed"):
        loader(shard_dir, vocab, num_workers=workers, seed=5).load_state_dict(state)


def consume(loaders: list[SpeechLoader], batches: int) -> list[str]:
    """Every rank takes `batches` batches (in step, as training does); the keys they saw."""
    keys = []
    for ld in loaders:
        stream = iter(ld)
        for _ in range(batches):
            keys += next(stream)["keys"]
    return keys


def test_elastic_resume_uses_each_sample_once_on_any_world(cv_shards):
    shard_dir, expected = cv_shards
    vocab = vocab_for(shard_dir)
    settings = {"max_batch_seconds": 10.0, "max_batch_size": 1}  # one utterance per batch: 6 batches in all
    old = [loader(shard_dir, vocab, rank=r, world_size=2, num_workers=2, **settings) for r in range(2)]
    assert len(old[0]) == len(old[1])
    before = consume(old, 1)
    states = [ld.state_dict() for ld in old]
    for world, workers in ((1, 1), (3, 1), (1, 2)):
        new = [loader(shard_dir, vocab, rank=r, world_size=world, num_workers=workers, **settings)
               for r in range(world)]
        assert {ld.load_state_dict(states) for ld in new} == {"elastic"}
        counts = {len(ld) for ld in new}
        assert len(counts) == 1, (world, workers, counts)  # every new rank yields as many batches
        after = [k for ld in new for b in ld for k in b["keys"] if not b["empty"]]
        assert sorted(before + after) == sorted(expected.written), (world, workers)  # each sample once
    # an elastic resume can itself be interrupted and resumed on yet another world
    three = [loader(shard_dir, vocab, rank=r, world_size=3, num_workers=1, **settings) for r in range(3)]
    for ld in three:
        ld.load_state_dict(states)
    middle = consume(three, 1)
    one = loader(shard_dir, vocab, num_workers=1, **settings)
    one.load_state_dict([ld.state_dict() for ld in three])
    last = [k for b in one for k in b["keys"] if not b["empty"]]
    assert sorted(before + middle + last) == sorted(expected.written)
    assert one.epoch == 0 and one.finished


def damaged_copy(shard_dir, tmp_path, shard: int):
    """A copy of the shards, and the path and tar members of the one to damage."""
    broken = tmp_path / "broken"
    shutil.copytree(shard_dir, broken)
    victim = sorted(broken.glob("*.tar"))[shard]
    with tarfile.open(victim) as tar:
        return broken, victim, tar.getmembers()


def test_truncated_shard_is_skipped_counted_and_ranks_stay_in_step(cv_shards, tmp_path):
    shard_dir, expected = cv_shards
    broken, victim, members = damaged_copy(shard_dir, tmp_path, 1)
    first_two = members[:2]
    cut = first_two[-1].offset_data + first_two[-1].size + 700  # keep sample 1, cut into sample 2
    victim.write_bytes(victim.read_bytes()[:cut])
    vocab = vocab_for(shard_dir)
    ld = loader(broken, vocab, max_batch_seconds=4.0, max_batch_size=1)
    batches = list(ld)
    keys = [k for b in batches for k in b["keys"]]
    assert len(batches) == len(ld)  # the planned step count still holds
    assert len(keys) == len(expected.written) - 1 and len(set(keys)) == len(keys)
    # the lost sample's batch is still yielded, as an empty stand-in whose labels weigh nothing
    empty = [b for b in batches if b["empty"]]
    assert len(empty) == 1 and empty[0]["keys"] == [] and (empty[0]["labels"] == -100).all()
    assert all(not b["empty"] and len(b["keys"]) == 1 for b in batches if b is not empty[0])
    drops = ld.diagnostics()["drops"]
    assert drops["corrupt_shard"] == 1 and drops["missing_member"] == 1


def test_filters_count_drops_by_reason(cv_shards):
    shard_dir, expected = cv_shards
    vocab = vocab_for(shard_dir)
    durations = sorted(d for d, _ in expected.written.values())
    ld = loader(shard_dir, vocab, min_duration=durations[1] - 1e-3)
    assert ld.drops_at_plan() == {"below_min_duration": 1}
    assert sum(len(b["keys"]) for b in ld) == len(expected.written) - 1
    assert ld.diagnostics()["drops"] == {"below_min_duration": 1}
    # a conv stack of one frame per second cannot fit any of these sentences: all CTC-infeasible
    with pytest.raises(ValueError, match="ctc_infeasible"):
        SpeechLoader(shard_dir, LoaderConfig(), vocab=vocab, conv_kernel=(16000,), conv_stride=(16000,))


def test_output_frames_match_the_model():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8,) * 7, conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE)
    model = Wav2Vec2Model(config)
    for n in (400, 401, 16000, 33333):
        expect = model._get_feat_extract_output_lengths(torch.tensor(n)).item()
        assert output_frames(np.array([n]), CONV_KERNEL, CONV_STRIDE)[0] == expect


def test_resampled_mode_gives_fixed_steps_on_every_rank(cv_shards):
    shard_dir, _ = cv_shards
    vocab = vocab_for(shard_dir)
    lengths = [len(list(loader(shard_dir, vocab, mode="resampled", steps_per_epoch=7, rank=r, world_size=2,
                               num_workers=2))) for r in range(2)]
    assert lengths == [7, 7]


def test_shard_specs(cv_shards, tmp_path):
    shard_dir, expected = cv_shards
    names = sorted(p.name for p in shard_dir.glob("*.tar"))
    prefix = names[0].rsplit("-", 1)[0]
    assert expand_spec(shard_dir) == [str(shard_dir / n) for n in names]
    assert expand_spec(f"{shard_dir}/{prefix}-{{000000..000002}}.tar") == [str(shard_dir / n) for n in names]
    assert expand_spec(f"{shard_dir}/*.tar") == [str(shard_dir / n) for n in names]
    vocab = vocab_for(shard_dir)
    pipe = [f"pipe:cat {shard_dir / n}" for n in names]
    ld = SpeechLoader(pipe, LoaderConfig(max_batch_seconds=8.0), vocab=vocab,
                      index=str(shard_dir / "index.json"))
    assert sorted(k for b in ld for k in b["keys"]) == sorted(expected.written)
    with pytest.raises(ValueError, match="matches no shards"):
        SpeechLoader(f"{tmp_path}/nothing-*.tar")
    with pytest.raises(ValueError, match="index"):
        SpeechLoader(pipe)


def test_a_sample_whose_labels_cannot_fit_its_frames_is_dropped(cv_shards):
    shard_dir, expected = cv_shards
    vocab = vocab_for(shard_dir)
    # for a one-layer conv stack of stride s, sample i fits while frames(n_i) >= labels + repeats;
    # pick s so that exactly the sample with the fewest frames per label does not fit
    index = read_index(shard_dir)
    needs = {}
    for shard in index["shards"]:
        for key, seconds, text in zip(shard["keys"], shard["durations"], shard["texts"], strict=True):
            labels = vocab.encode(text)
            needs[key] = (round(seconds * 16000), len(labels) + int((labels[1:] == labels[:-1]).sum()))
    largest_ok = {k: n // need for k, (n, need) in needs.items()}  # kernel = stride = s: n // s frames
    assert all(output_frames(np.array([n]), (s,), (s,))[0] >= need > output_frames(np.array([n]), (s + 1,), (s + 1,))[0]
               for (n, need), s in zip(needs.values(), largest_ok.values(), strict=True))
    ranked = sorted(largest_ok, key=largest_ok.get)
    victim, stride = ranked[0], largest_ok[ranked[1]]
    assert largest_ok[victim] < stride
    ld = SpeechLoader(shard_dir, LoaderConfig(max_batch_seconds=8.0), vocab=vocab,
                      conv_kernel=(stride,), conv_stride=(stride,))
    keys = [k for b in ld for k in b["keys"]]
    assert victim not in keys and len(keys) == len(expected.written) - 1
    assert ld.drops_at_plan() == {"ctc_infeasible": 1}


def test_wav_fast_path_equals_soundfile():
    from w2v.data.decode import decode_member
    from w2v.shards import audio

    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, 16001, dtype=np.int16)
    wav = audio.encode(pcm, "wav")
    assert np.array_equal(decode_member(wav), sf.read(io.BytesIO(wav), dtype="int16")[0])
    stereo = io.BytesIO()
    sf.write(stereo, np.stack([pcm, pcm], 1), 16000, format="WAV", subtype="PCM_16")
    assert np.array_equal(decode_member(stereo.getvalue()), pcm)  # not the fast path: soundfile downmixes
    with pytest.raises(ValueError, match="sample rate"):
        decode_member(audio.encode(pcm, "wav", sr=8000))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_handles_the_common_tar_formats(tmp_path, fmt):
    from w2v.shards.tar import tar_members

    long_key = "k" * 120 if fmt != tarfile.USTAR_FORMAT else "short_key"
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in ((f"dir/{long_key}.flac", b"audio" * 300), (f"dir/{long_key}.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert list(tar_members(str(path))) == [(long_key, "flac", b"audio" * 300), (long_key, "json", b"{}")]
    with pytest.raises(tarfile.ReadError):
        list(tar_members(str(path), expected_bytes=path.stat().st_size + 1))


def test_flac_members_decode_with_w2v_flac_or_soundfile():
    from w2v.data.decode import decode_member
    from w2v.shards import audio

    rng = np.random.default_rng(0)
    pcm = (3000 * rng.standard_normal(16001)).astype(np.int16)
    flac = audio.encode(pcm, "flac")
    assert np.array_equal(decode_member(flac), pcm)
    stereo = io.BytesIO()  # outside w2v.flac: soundfile decodes and downmixes
    sf.write(stereo, np.stack([pcm, pcm], 1), 16000, format="FLAC", subtype="PCM_16")
    assert np.array_equal(decode_member(stereo.getvalue()), pcm)
    damaged = bytearray(flac)
    damaged[len(flac) // 2] ^= 0x10
    with pytest.raises(ValueError, match="CRC|invalid|damaged"):
        decode_member(bytes(damaged))


def test_a_damaged_member_is_skipped_and_counted(cv_shards, tmp_path):
    shard_dir, expected = cv_shards
    broken, victim, members = damaged_copy(shard_dir, tmp_path, 0)
    member = next(m for m in members if m.name.endswith(".flac"))
    data = bytearray(victim.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF  # inside the audio: the tar stays valid
    victim.write_bytes(bytes(data))
    ld = loader(broken, vocab_for(shard_dir), max_batch_seconds=4.0)
    keys = [k for b in ld for k in b["keys"]]
    assert len(keys) == len(expected.written) - 1
    assert ld.diagnostics()["drops"]["undecodable_member"] == 1


def test_flac_decoder_soundfile_gives_the_same_batches(cv_shards, monkeypatch):
    shard_dir, _ = cv_shards
    vocab = vocab_for(shard_dir)
    import w2v.data.decode as decode

    def refuse(data):
        raise AssertionError("w2v.flac used although flac_decoder='soundfile'")

    ours = list(loader(shard_dir, vocab))
    monkeypatch.setattr(decode, "decode_flac", refuse)
    theirs = list(loader(shard_dir, vocab, flac_decoder="soundfile"))
    assert [b["keys"] for b in ours] == [b["keys"] for b in theirs] and ours
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a["input_values"], b["input_values"])
    with pytest.raises(ValueError, match="flac_decoder"):
        LoaderConfig(flac_decoder="libflac")


# --- remote shards over a flaky connection ---------------------------------------------------------


class FlakyShardServer:
    """A loopback HTTP server over a folder, with range requests; `cut(name, start, size)` says per
    request how many bytes of a shard to send before it drops the connection (None: all)."""

    def __init__(self, folder, cut):
        import http.server
        import threading

        self.requests: list[tuple[str, int]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0])
                server.requests.append((path.name, start))
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                sent = cut(path.name, start, len(data)) if path.suffix == ".tar" else None
                if sent is not None:
                    self.wfile.write(body[:sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_remote_shards_resume_after_a_cut_connection(cv_shards, tmp_path, monkeypatch):
    shard_dir, expected = cv_shards
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "cache"))
    names = sorted(p.name for p in shard_dir.glob("*.tar"))
    first_cut = set()

    def cut_once(name, start, size):  # each shard's first response is cut mid-member
        if start == 0 and name not in first_cut:
            first_cut.add(name)
            return int(0.4 * size)
        return None

    server = FlakyShardServer(shard_dir, cut_once)
    try:
        urls = [f"{server.url}/{n}" for n in names]
        ld = loader(urls, vocab_for(shard_dir), index=f"{server.url}/index.json", remote_backoff_seconds=0.01)
        keys = [k for b in ld for k in b["keys"]]
        assert sorted(keys) == sorted(expected.written)  # every sample, none lost to the cuts
        diagnostics = ld.diagnostics()
        assert diagnostics["remote_retries"] == len(names) and not diagnostics["drops"]
        assert {start for _, start in server.requests if start} != set()  # resumed with range requests
    finally:
        server.close()
    always = FlakyShardServer(shard_dir, lambda name, start, size: 0 if start else int(0.4 * size))  # never whole
    try:
        urls = [f"{always.url}/{names[0]}"]
        ld = loader(urls, vocab_for(shard_dir), index=f"{always.url}/index.json", remote_backoff_seconds=0.01,
                    remote_attempts=3)
        batches = list(ld)
        delivered = [k for b in batches for k in b["keys"]]
        diagnostics = ld.diagnostics()
        assert diagnostics["remote_retries"] == 2 and diagnostics["drops"].get("corrupt_shard") == 1, diagnostics
        assert len(delivered) + diagnostics["drops"]["missing_member"] == 2  # counted, not silently lost
    finally:
        always.close()


def test_a_pipe_command_that_fails_mid_shard_is_run_again(cv_shards, tmp_path, monkeypatch):
    shard_dir, expected = cv_shards
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "cache"))
    specs = []
    for shard in sorted(shard_dir.glob("*.tar")):  # like curl cut off: 40% of the bytes, then exit 18
        mark, half = tmp_path / f"{shard.name}.tried", int(0.4 * shard.stat().st_size)
        specs.append(f"pipe:sh -c 'if [ -e {mark} ]; then cat {shard}; else touch {mark}; "
                     f"head -c {half} {shard}; exit 18; fi'")
    ld = loader(specs, vocab_for(shard_dir), index=str(shard_dir / "index.json"), remote_backoff_seconds=0.01)
    assert sorted(k for b in ld for k in b["keys"]) == sorted(expected.written)
    assert ld.diagnostics()["remote_retries"] == len(specs) and not ld.diagnostics()["drops"]


def test_resampled_mode_delivers_every_drawn_sample_even_from_a_shard_drawn_twice(cv_shards):
    shard_dir, _ = cv_shards
    one_shard = sorted(shard_dir.glob("*.tar"))[:1]  # every draw is this shard: always twice in a row
    ld = loader([str(p) for p in one_shard], vocab_for(shard_dir), mode="resampled", steps_per_epoch=4,
                max_batch_seconds=10.0, max_batch_size=1)
    plan = ld.plans()[0][0]
    planned = [str(plan.stream[p]) for p in plan.order[:plan.offsets[-1]]]
    delivered = [k for b in ld for k in b["keys"]]
    assert len(planned) == 4 and len(delivered) == 4 and not ld.diagnostics()["drops"]


# --- columnar metadata ------------------------------------------------------------------------------


def test_columns_hold_exactly_what_the_index_says(cv_shards):
    from w2v.data.labels import char_counts, labels
    from w2v.data.plan import ctc_min_frames
    from w2v.shards.columns import open_columns

    shard_dir, _ = cv_shards
    index = read_index(shard_dir)
    columns = open_columns(str(shard_dir / "index.json"))
    assert columns.names == [s["name"] for s in index["shards"]]
    assert list(columns.keys) == [k for s in index["shards"] for k in s["keys"]]
    assert list(columns.texts) == [t for s in index["shards"] for t in s["texts"]]
    assert np.array_equal(columns.durations, [d for s in index["shards"] for d in s["durations"]])
    vocab = vocab_for(shard_dir)
    cached = labels(columns, vocab)
    for i, text in enumerate(columns.texts):  # the cached labels are Vocabulary.encode's, exactly
        assert np.array_equal(cached[i], vocab.encode(text))
        assert cached.need[i] == ctc_min_frames(vocab.encode(text))
    normalize = vocab.normalizer
    for k, shard in enumerate(index["shards"]):  # each shard's characters, counted when normalised
        expected = Counter("".join(normalize(t) for t in shard["texts"]))
        expected.pop(" ")
        assert char_counts(columns, normalize, [k]) == expected
    # the vocabulary from the cached counts is the one built from every text, for the whole folder
    # and for a selection of its shards
    from w2v.data.labels import vocabulary_from_shards

    all_texts = [t for s in index["shards"] for t in s["texts"]]
    assert vocabulary_from_shards(select_shards(str(shard_dir))).tokens == Vocabulary.build(all_texts).tokens
    first = str(shard_dir / index["shards"][0]["name"])
    assert vocabulary_from_shards(select_shards([first])).tokens == Vocabulary.build(index["shards"][0]["texts"]).tokens
    # a vocabulary without some characters: the rows with [UNK] found by the cache are the right ones
    small = Vocabulary.build(index["shards"][0]["texts"])
    table = loader(shard_dir, small).table
    brute = [i for i in range(len(table)) if small.unk_id in small.encode(table.text(i))]
    assert brute and table.samples_with_label(small.unk_id).tolist() == brute


def test_old_folders_get_columns_and_stale_ones_are_rebuilt(commonvoice, tmp_path, monkeypatch):
    import subprocess
    import sys

    src, expected = commonvoice
    out = tmp_path / "cv"
    run_command("w2v-make-shards", src / "train.tsv", "--out", out, "--max-shard-samples", "2", "--no-progress",
             check=True)
    assert (out / "columns" / "meta.json").is_file()  # written beside the index
    shutil.rmtree(out / "columns")  # a folder made before columns existed
    code = ("import sys; from w2v.shards.columns import open_columns; "
            "print(len(open_columns(sys.argv[1] + '/index.json')))")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
              for _ in range(3)]  # built by one of them while the others wait
    assert [r.communicate()[0].strip() for r in racers] == ["6"] * 3
    vocab = vocab_for(out)
    assert sorted(k for b in loader(out, vocab) for k in b["keys"]) == sorted(expected.written)
    # the shards rewritten (one per shard now): the columns are stale and rebuilt
    run_command("w2v-make-shards", src / "train.tsv", "--out", out, "--max-shard-samples", "1", "--no-progress",
             "--overwrite", check=True)
    before = (out / "columns" / "meta.json").read_text()
    (out / "index.json").touch()  # a newer index than the columns
    ld = loader(out, vocab)
    assert ld.table.num_shards == 6 and (out / "columns" / "meta.json").read_text() != before
    # a folder this process cannot write: the columns go to the cache folder
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "cache"))
    shutil.rmtree(out / "columns")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert sorted(k for b in loader(out, vocab) for k in b["keys"]) == sorted(expected.written)
    assert not (out / "columns").exists() and list((tmp_path / "cache").rglob("meta.json"))


def test_a_folder_name_with_a_comma_is_one_spec(cv_shards, tmp_path):
    shard_dir, expected = cv_shards
    odd = tmp_path / "train,clean"
    shutil.copytree(shard_dir, odd)
    assert sorted(k for b in loader(odd, vocab_for(shard_dir)) for k in b["keys"]) == sorted(expected.written)


def test_the_cached_labels_plan_exactly_what_a_per_text_labeler_plans(cv_shards, tmp_path):
    """The columns + label cache against the path that encodes each text from index.json: the same
    batches (keys, labels, audio) for every seed, epoch, rank and worker, drops included."""
    shard_dir, _ = cv_shards
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(shard_dir, rebuilt)
    shutil.rmtree(rebuilt / "columns")  # built again from index.json on first use
    vocab = vocab_for(shard_dir)

    def batches(folder, rank, epoch, **labels):
        cfg = LoaderConfig(max_batch_seconds=6.0, shuffle_buffer=3, num_workers=2, seed=11, max_duration=3.1)
        ld = SpeechLoader(folder, cfg, rank=rank, world_size=2, conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE,
                          **labels)
        ld.set_epoch(epoch)
        out = [(b["keys"], b["labels"].tolist(), b["input_values"].abs().sum().item()) for b in ld]
        return out, ld.table.drop_reason.tolist()

    for rank in range(2):
        for epoch in range(2):
            cached = batches(shard_dir, rank, epoch, vocab=vocab)
            assert cached[0] and any(cached[1])  # some batches, and some samples dropped
            assert batches(shard_dir, rank, epoch, labeler=vocab.encode) == cached
            assert batches(rebuilt, rank, epoch, vocab=vocab) == cached


def test_the_index_is_read_one_shard_entry_at_a_time_exactly_as_json_reads_it(tmp_path):
    from w2v.shards.index import iter_index_shards

    index = {"format": "w2v-shards/1", "name": 'odd "name" {[', "shards": [
        {"name": "a.tar", "num_samples": 2, "keys": ["k1", "k2"], "durations": [1.25, 123456789.5],
         "texts": ["héllo “x”", "a]b},c"]},
        {"name": "b.tar", "num_samples": 0, "keys": [], "durations": [], "texts": []}], "skipped": {"x": 1}}
    path = tmp_path / "index.json"
    for indent in (None, 2):
        path.write_text(json.dumps(index, indent=indent, ensure_ascii=indent is None), encoding="utf-8")
        for piece in (1, 2, 7, 64, 1 << 22):  # values cut by every possible buffer end
            assert list(iter_index_shards(str(path), piece)) == index["shards"]
    path.write_text(json.dumps({**index, "format": "other"}))
    with pytest.raises(ValueError, match="not a w2v shard index"):
        list(iter_index_shards(str(path)))
    path.write_text(json.dumps(index)[:-40])  # cut short
    with pytest.raises(ValueError, match="invalid JSON"):
        list(iter_index_shards(str(path)))
