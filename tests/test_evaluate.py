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
