"""w2v-evaluate scores every utterance of a set, and evaluation counts empty references."""

import json

import pytest

from tests.conftest import make_tiny_model, run_command
from tests.corpora import speak_to
from w2v.metrics import ErrorCounts
from w2v.text import Vocabulary

VOCAB = {"[PAD]": 0, "[UNK]": 1, "|": 2, **{c: 3 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}


def test_an_empty_reference_is_scored_as_insertions():
    counts = ErrorCounts.of(["the cat sat", "", "?"], ["the cat sad", "a  dog", "?"])
    assert counts.utterances == 3 and counts.empty_references == 1
    assert counts.words == 3 + 0 + 1
    assert counts.word_edits == 1 + 2 + 0  # a substitution, then both words of the empty one's hypothesis
    assert counts.char_edits == 1 + len("a dog") + 0
    assert counts.wer == pytest.approx(3 / 4)
    total = counts + ErrorCounts.of([""], [""])
    assert total.utterances == 4 and total.empty_references == 2 and total.word_edits == 3
    with pytest.raises(ValueError):
        ErrorCounts.of(["a"], [])


def test_unknown_characters_are_counted_per_text_set():
    vocab = Vocabulary.build(["the cat"])
    assert vocab.unknown_chars(["the cat"]) == {}
    assert vocab.unknown_chars(["the dog", "Über"]) == {"d": 1, "o": 1, "g": 1, "ü": 1, "b": 1, "r": 1}
    assert (vocab.encode("dog") == vocab.unk_id).all()  # encoding does not count (nor mix sets)


@pytest.fixture(scope="module")
def odd_set(tmp_path_factory):
    """Shards of three utterances: plain, one whose transcript normalises to nothing ("?!"),
    and one of about 4 s (longer than the --max-batch-seconds the test passes)."""
    root = tmp_path_factory.mktemp("odd")
    tmp = root / "tmp"
    tmp.mkdir()
    texts = {"plain": "a cat sat", "empty": "?!",
             "long": "the quick brown fox jumps over the lazy dog near the old river bank"}
    rows = []
    for i, (key, text) in enumerate(texts.items()):
        speak_to("some words here" if key == "empty" else text, root / f"{key}.wav", i, 16000, "wav", tmp)
        rows.append(json.dumps({"audio": f"{key}.wav", "text": text, "id": key}))
    (root / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    run_command("w2v-make-shards", root / "manifest.jsonl", "--out", root / "shards", "--no-progress", check=True)
    index = json.loads((root / "shards" / "index.json").read_text())
    durations = dict(zip(index["shards"][0]["keys"], index["shards"][0]["durations"], strict=True))
    assert index["num_samples"] == 3 and durations["long"] > 3.0 > durations["plain"]
    (root / "model").mkdir()
    return root / "shards", make_tiny_model(root / "model", VOCAB)


def test_evaluate_scores_every_utterance(odd_set, tmp_path):
    shards, model = odd_set
    report, errors, text = tmp_path / "eval.json", tmp_path / "errors.jsonl", tmp_path / "lm.txt"
    text.write_text("a cat sat\nthe quick brown fox\n")
    run_command("w2v-build-lm", "--text", text, "--order", "3", "--out", tmp_path / "lm", check=True)
    proc = run_command("w2v-evaluate", "--model", model, "--shards", shards, "--max-batch-seconds", "3",
                    "--lm", tmp_path / "lm", "--beam-width", "2", "--workers", "1", "--json", report, "--errors",
                    errors, check=True)
    assert f"LM: {tmp_path / 'lm' / '3gram.arpa'} (3-gram," in proc.stdout  # it names what it decodes with
    result = json.loads(report.read_text())
    assert result["utterances"] == result["index_utterances"] == 3  # the long one is batched alone
    assert result["excluded"] == {} and result["empty_references"] == 1
    rows = {r["key"]: r for r in map(json.loads, errors.read_text().splitlines())}
    assert sorted(rows) == ["empty", "long", "plain"]
    assert rows["empty"]["empty_reference"] and rows["empty"]["wer"] is None
    assert rows["empty"]["word_edits"] == len(rows["empty"]["hyp"].split())
    assert not rows["plain"]["empty_reference"] and rows["plain"]["wer"] is not None
    assert "3 of the index's 3 utterances scored" in proc.stdout and "empty references" in proc.stdout
    typo = run_command("w2v-evaluate", "--model", model, "--shards", shards, "--lm", tmp_path / "lm3")
    assert typo.returncode == 2 and "no such LM file or folder" in typo.stderr and "acoustic" not in typo.stderr


def test_vocabulary_case_comes_from_its_characters():
    from w2v.text import SpecialTokens, TextNormalizer

    hub = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "'": 7}
    for specials in (SpecialTokens("<pad>", "<unk>", "|", "<s>", "</s>"), SpecialTokens("<pad>", "<unk>", "|")):
        vocab = Vocabulary(hub, specials=specials)  # whether or not the tokenizer files name <s>/</s>
        assert vocab.case == "upper"
        assert TextNormalizer().for_vocabulary(vocab)("It's tee.") == "IT'S TEE"
    assert Vocabulary.build(["the cat"]).case == "lower"
    assert Vocabulary({"[PAD]": 0, "[UNK]": 1, "|": 2, "字": 3}).case == "lower"  # no cased letters
    named = Vocabulary(hub, specials=SpecialTokens("<pad>", "<unk>", "|", "<s>", "</s>"))
    assert named.decoding_table()[1] == "" and named.decoding_table()[4] == " "


def lm_folder(tmp_path):
    """A 3-gram over the words of the odd set's transcripts (KenLM's lmplz, via w2v-build-lm)."""
    text = tmp_path / "lm.txt"
    text.write_text("a cat sat\nthe quick brown fox\n")
    run_command("w2v-build-lm", "--text", text, "--order", "3", "--out", tmp_path / "lm", check=True)
    return tmp_path / "lm"


def test_device_cpu_and_overlapped_lm_decoding_give_the_same_figures(odd_set, tmp_path):
    """Without --device, with --device cpu, and with the LM decoded after the acoustic pass (a 1 × 1
    --tune grid decodes every utterance at once): the same words, edits, WER, CER and hypotheses."""
    shards, model = odd_set
    lm = lm_folder(tmp_path)
    runs = {"default": [], "cpu": ["--device", "cpu"], "after": ["--tune", "--alphas", "0.5", "--betas", "1.0"]}
    reports, errors = {}, {}
    for name, extra in runs.items():
        run_command("w2v-evaluate", "--model", model, "--shards", shards, "--max-batch-seconds", "3", "--lm", lm,
                    "--alpha", "0.5", "--beta", "1.0", "--beam-width", "8", "--workers", "2", "--json",
                    tmp_path / f"{name}.json", "--errors", tmp_path / f"{name}.jsonl", *extra, check=True)
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
        del reports[name]["real_time_factor"]  # seconds differ from run to run
        errors[name] = (tmp_path / f"{name}.jsonl").read_text()
    assert reports["default"] == reports["cpu"]
    assert reports["default"]["lm"] == reports["after"]["lm"] and "grid" in reports["after"]
    assert errors["default"] == errors["cpu"] == errors["after"]
    hyps = [json.loads(line)["hyp"] for line in errors["default"].splitlines()]
    assert len(set(hyps)) == 3 and all(hyps)  # three different texts: a mix-up of their order would show


def test_a_device_this_machine_lacks_is_one_error_line(odd_set, tmp_path, monkeypatch, capsys):
    import torch

    from w2v.cli import evaluate

    shards, model = odd_set
    if not torch.cuda.is_available():
        proc = run_command("w2v-evaluate", "--model", model, "--shards", shards, "--device", "cuda")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith("error: --device cuda: CUDA is not available")
    # checked before the shards and the model are looked at: neither exists here
    nothing = ["--model", str(tmp_path / "no-model"), "--shards", str(tmp_path / "no-shards")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for flags, said in ((["--device", "cuda:3"], "error: --device cuda:3: this machine has 2 CUDA devices"),
                        (["--device", "gpu"], "error: --device gpu: not a device (auto, cpu, cuda or cuda:N)"),
                        (["--device", "cpu", "--precision", "fp16"], "error: --precision fp16 needs a CUDA device")):
        assert evaluate.main([*nothing, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(said) and err.count("\n") == 1, err


def test_overlapped_decoding_equals_one_batch_after_another(odd_set, tmp_path):
    """Each batch decoded on its own thread while the next is computed: the hypotheses of one
    decode_batch call on all the log-probabilities, in the same order."""
    from w2v.cli.evaluate import OverlappedDecoding, acoustic_outputs, open_decoder, parse_args
    from w2v.lm.decode import find_lm_file
    from w2v.run_folder import load_for_inference
    from w2v.shards.spec import select_shards

    shards, model_dir = odd_set
    lm = lm_folder(tmp_path)
    args = parse_args(["--model", str(model_dir), "--shards", str(shards), "--lm", str(lm), "--beam-width", "8",
                       "--workers", "2"])
    model, _ = load_for_inference(model_dir)
    batch_sizes = []
    with open_decoder(args, Vocabulary.load(model_dir / "vocab.json"), model.config.vocab_size,
                      find_lm_file(lm)) as decoder, OverlappedDecoding(decoder) as overlapped:
        def on_batch(log_probs):
            batch_sizes.append(len(log_probs))
            overlapped.submit(log_probs)

        log_probs, keys, *_ = acoustic_outputs(model, select_shards(str(shards)), 3.0, on_batch=on_batch)
        hyps, seconds = overlapped.results()
        assert batch_sizes == [2, 1]  # the 4 s utterance in a batch of its own
        assert hyps == decoder.decode_batch(log_probs) == [decoder.decode(lp) for lp in log_probs]
    assert len(set(hyps)) == len(keys) == 3 and seconds > 0


def test_lm_decoding_runs_beside_the_acoustic_pass():
    """submit() hands a batch to the decoding thread and returns: the caller goes on to the next batch
    while the first one is still being decoded."""
    import threading

    import numpy as np

    from w2v.cli.evaluate import OverlappedDecoding

    class HeldDecoder:  # decodes a batch only once the test lets it: "text" = the frames of each utterance
        def __init__(self):
            self.started, self.release, self.threads = threading.Event(), threading.Event(), set()

        def decode_batch(self, log_probs):
            self.threads.add(threading.get_ident())
            self.started.set()
            if not self.release.wait(30):
                raise AssertionError("the next batch was not submitted while this one was decoding")
            return [str(len(lp)) for lp in log_probs]

    held = HeldDecoder()
    with OverlappedDecoding(held) as overlapped:
        overlapped.submit([np.zeros((2, 4), np.float32)])
        assert held.started.wait(30)  # batch 0 is being decoded...
        overlapped.submit([np.zeros((5, 4), np.float32), np.zeros((1, 4), np.float32)])  # ...and batch 1 comes
        held.release.set()
        assert overlapped.results()[0] == ["2", "5", "1"]
    assert held.threads and threading.get_ident() not in held.threads


def test_a_corpus_is_decoded_with_the_lm_as_after_its_pass(odd_set, tmp_path):
    """--corpus: each group of inputs decoded while the next is computed gives the hypotheses of
    decoding them all after the acoustic pass (a 1 × 1 --tune grid)."""
    shards, model = odd_set
    lm = lm_folder(tmp_path)
    reports, errors = {}, {}
    for name, extra in (("beside", []), ("after", ["--tune", "--alphas", "0.5", "--betas", "1.0"])):
        run_command("w2v-evaluate", "--model", model, "--corpus", shards.parent / "manifest.jsonl", "--lm", lm,
                    "--alpha", "0.5", "--beta", "1.0", "--beam-width", "8", "--workers", "2", "--json",
                    tmp_path / f"{name}.json", "--errors", tmp_path / f"{name}.jsonl", *extra, check=True)
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
        errors[name] = (tmp_path / f"{name}.jsonl").read_text()
    assert reports["beside"]["utterances"] == 3 and reports["beside"]["lm"] == reports["after"]["lm"]
    assert errors["beside"] == errors["after"]
    assert len({json.loads(line)["hyp"] for line in errors["beside"].splitlines()}) == 3
