"""w2v-build-lm with the real lmplz/build_binary, from text and from shards."""

import kenlm
import pytest

from tests.conftest import run_command
from w2v.lm import arpa_check
from w2v.text import TextNormalizer


def test_build_lm_from_text_has_eos_naturally_and_loads(tmp_path):
    text = tmp_path / "lm.txt"
    text.write_text("The quick brown fox.\n“Curly” quotes, it’s fine!\n\n...\nthe fox sells shells\n")
    out = tmp_path / "lm"
    proc = run_command("w2v-build-lm", "--text", text, "--order", "3", "--out", out, "--binary", check=True)
    assert "2 empty after normalisation, skipped" in proc.stdout
    report = arpa_check.check_arpa(out / "3gram.arpa")
    assert report.ok and report.has_eos and "fixed" not in proc.stdout  # one sentence per line: </s> by itself
    corpus = (out / "corpus.txt").read_text()
    assert corpus.endswith("\n") and corpus.splitlines() == [
        "the quick brown fox", "curly quotes it's fine", "the fox sells shells"]
    words = (out / "unigrams.txt").read_text().split()
    assert "it's" in words and "<s>" not in words and "</s>" not in words
    for model_file in (out / "3gram.arpa", out / "3gram.bin"):
        model = kenlm.Model(str(model_file))
        assert model.order == 3
        assert model.score("the fox sells shells") > model.score("shells sells the fox")


def test_build_lm_from_shards_uses_the_training_normalisation(cv_shards, tmp_path):
    shards, expected = cv_shards
    out = tmp_path / "lm"
    run_command("w2v-build-lm", "--shards", shards, "--order", "2", "--out", out, check=True)
    normalise = TextNormalizer()
    assert sorted((out / "corpus.txt").read_text().splitlines()) == sorted(
        normalise(t) for _, t in expected.written.values())


def test_build_lm_refuses_missing_text_and_a_unigram_order(tmp_path):
    proc = run_command("w2v-build-lm", "--text", tmp_path / "nope.txt", "--out", tmp_path / "lm")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    (tmp_path / "t.txt").write_text("a cat sat\n")
    proc = run_command("w2v-build-lm", "--text", tmp_path / "t.txt", "--order", "1", "--out", tmp_path / "lm")
    assert proc.returncode == 2 and "at least a bigram" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "lm").exists()


def test_an_lm_folder_holds_one_lm(tmp_path):
    from w2v.lm.decode import find_lm_file

    text = tmp_path / "lm.txt"
    text.write_text("the cat sat on the mat\nthe dog sat on the log\n")
    out = tmp_path / "lm"
    run_command("w2v-build-lm", "--text", text, "--order", "4", "--out", out, "--binary", check=True)
    again = run_command("w2v-build-lm", "--text", text, "--order", "3", "--out", out)
    assert again.returncode == 2 and "already holds an LM" in again.stderr and "--overwrite" in again.stderr
    assert (out / "4gram.bin").is_file()  # untouched: the refused build removed nothing
    assert find_lm_file(out).name == "4gram.arpa"  # the decoder reads the ARPA the binary was built from
    assert find_lm_file(out / "4gram.bin").name == "4gram.arpa"
    run_command("w2v-build-lm", "--text", text, "--order", "3", "--out", out, "--overwrite", check=True)
    assert sorted(p.name for p in out.iterdir()) == ["3gram.arpa", "corpus.txt", "unigrams.txt"]
    (out / "4gram.arpa").write_text("\\data\\\n")  # a second LM put there by hand: which one is meant?
    with pytest.raises(ValueError, match="more than one LM"):
        find_lm_file(out)
