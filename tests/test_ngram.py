"""w2v.lm.ngram: our ARPA model against KenLM's own scores, its cache, and the ARPAs it refuses."""

from __future__ import annotations

import os
import shutil
import subprocess

import kenlm
import numpy as np
import pytest

from w2v.lm.build import find_tool
from w2v.lm.ngram import ArpaError, NgramModel, cache_folder

TEXT = """the cat sat on the mat
the dog sat on the log
a cat and a dog sat on a mat
the cat ate the rat and the dog ate the cat
on the mat sat a rat
"""


def lmplz(text: str, order: int, out) -> None:
    subprocess.run([find_tool("lmplz", build=False), "-o", str(order), "--discount_fallback", "-S", "64M", "-T",
                    str(out.parent), "--arpa", str(out)], input=text.encode(), check=True, capture_output=True)


@pytest.fixture(scope="module")
def arpa(tmp_path_factory):
    out = tmp_path_factory.mktemp("ngram") / "4gram.arpa"
    lmplz(TEXT, 4, out)
    return out


SENTENCES = ["the cat sat on the mat", "a dog ate the mat", "the rat sat on a log and the cat ate",
             "unseen words the zebra sat", "", "the the the the", "mat on sat cat the"]


def test_scores_equal_kenlm_for_every_history(arpa):
    ours, theirs = NgramModel.load(arpa), kenlm.Model(str(arpa))
    assert ours.order == theirs.order == 4
    for sentence in SENTENCES:
        for bos in (True, False):
            for eos in (True, False):
                assert ours.score_sentence(sentence, bos, eos) == pytest.approx(
                    theirs.score(sentence, bos=bos, eos=eos), abs=1e-4), (sentence, bos, eos)
    # word by word, as the beam search asks: KenLM's BaseScore with its states
    state, out = kenlm.State(), kenlm.State()
    theirs.BeginSentenceWrite(state)
    ours_state = ours.start_state()
    for word in "the dog sat on the zebra mat".split():
        expected = theirs.BaseScore(state, word, out)
        got, ours_state = ours.score(ours_state, word)
        assert got == pytest.approx(expected, abs=1e-5), word
        state, out = out, state


def test_cache_is_built_once_and_rebuilt_when_the_arpa_changes(tmp_path):
    arpa = tmp_path / "3gram.arpa"
    lmplz(TEXT, 3, arpa)
    first = NgramModel.load(arpa)
    folder = cache_folder(arpa)
    assert folder.parent == tmp_path and folder.name.startswith(".")  # hidden: pyctcdecode lists the folder
    built = (folder / "meta.json").stat().st_mtime_ns
    assert NgramModel.load(arpa).meta == first.meta
    assert (folder / "meta.json").stat().st_mtime_ns == built  # reused, not rebuilt
    before = first.score_sentence("the cat sat")
    lmplz("the cat sat\nthe cat sat\na dog\n", 3, arpa)  # a new LM under the same name
    again = NgramModel.load(arpa)
    assert again.score_sentence("the cat sat") != pytest.approx(before)
    assert again.score_sentence("the cat sat") == pytest.approx(kenlm.Model(str(arpa)).score("the cat sat"), abs=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_folder_caches_under_w2v_cache_dir(tmp_path, monkeypatch):
    arpa = tmp_path / "3gram.arpa"
    lmplz(TEXT, 3, arpa)
    monkeypatch.setenv("W2V_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert cache_folder(arpa).is_relative_to(tmp_path / "cache")
    assert NgramModel.load(arpa).score_sentence("the cat") == pytest.approx(kenlm.Model(str(arpa)).score("the cat"), abs=1e-4)


def test_gzipped_arpa_reads_the_same(arpa, tmp_path):
    import gzip

    packed = tmp_path / "4gram.arpa.gz"
    with open(arpa, "rb") as source, gzip.open(packed, "wb") as out:
        shutil.copyfileobj(source, out)
    assert NgramModel.load(packed).score_sentence("the dog ate the rat") == pytest.approx(
        NgramModel.load(arpa).score_sentence("the dog ate the rat"))


def test_broken_arpas_are_named_errors(arpa, tmp_path):
    text = arpa.read_text()
    cases = {
        "count": (text.replace("ngram 2=", "ngram 2=1", 1), "ends after .* announced in the header"),
        "not arpa": ("hello\n", "not an ARPA file"),
        "unknown word": (text.replace("\tthe cat", "\tthe lion", 1), "not a 1-gram: 'lion'"),
    }
    for name, (content, message) in cases.items():
        broken = tmp_path / f"{name.replace(' ', '_')}.arpa"
        broken.write_text(content)
        with pytest.raises(ArpaError, match=message):
            NgramModel.load(broken)
    # a 3-gram whose 2-gram suffix is missing: KenLM's trie needs it, so do we
    lines = text.splitlines()
    start = lines.index("\\3-grams:")
    three = next(line for line in lines[start + 1:] if line.count(" ") == 2 and "<s>" not in line)
    suffix = " ".join(three.split("\t")[1].split()[1:])
    two = [i for i, line in enumerate(lines) if line.split("\t")[1:2] == [suffix]]
    lines = [line for i, line in enumerate(lines) if i not in two]
    lines = [line.replace(f"ngram 2={text.split('ngram 2=')[1].split()[0]}",
                          f"ngram 2={int(text.split('ngram 2=')[1].split()[0]) - len(two)}") for line in lines]
    broken = tmp_path / "open.arpa"
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(ArpaError, match="not closed under suffixes"):
        NgramModel.load(broken)


def test_memory_is_compact(arpa):
    lm = NgramModel.load(arpa)
    ngrams = sum(lm.counts)
    assert lm.nbytes() < 24 * ngrams + 64 * lm.vocab_size  # 16 bytes per n-gram below the top order, 8 at it
    assert isinstance(lm.prob, np.ndarray) and not lm.prob.flags.writeable  # memory-mapped, read-only


def test_a_vocabulary_past_65535_words_keeps_exact_ids(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    text = "\n".join(" ".join(words[i:i + 10]) for i in range(0, len(words), 10)) + "\n"
    arpa = tmp_path / "2gram.arpa"
    lmplz(text, 2, arpa)
    ours, theirs = NgramModel.load(arpa), kenlm.Model(str(arpa))
    assert ours.word.dtype == np.int32 and ours.vocab_size > 70_000
    for sentence in ("w69998 w69999", "w5 w6 w7", "w69999 w0 w12345 w12346"):
        assert ours.score_sentence(sentence) == pytest.approx(theirs.score(sentence), abs=1e-4)
