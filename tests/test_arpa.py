"""w2v.lm.arpa_fix, w2v.lm.arpa_check and w2v-fix-arpa: the </s> fix, checking, and real KenLM / pyctcdecode on the result."""

from __future__ import annotations

import errno
import gzip
import importlib.util
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from benchmarks.baselines import ARPA_EOS_LOOP  # the wav2vec2 n-gram blog post's loop, verbatim
from w2v.lm import arpa, arpa_check, arpa_fix

REPO = Path(__file__).resolve().parents[1]
FIX_COMMAND = ["-m", "w2v.cli.fix_arpa"]  # w2v-fix-arpa
ONE_LINE_CORPUS = "the cat sat on the mat the dog sat on the log"  # no newline: lmplz writes no </s>
SENTENCES = "the cat sat on the mat\nthe dog sat on the log\n"


cli = importlib.import_module("w2v.cli.fix_arpa")


def blog_loop(src: Path, dst: Path) -> None:
    """Run the blog's </s> loop (ARPA_EOS_LOOP) on src, writing dst."""
    code = ARPA_EOS_LOOP.replace('"5gram.arpa"', repr(str(src))).replace('"5gram_correct.arpa"', repr(str(dst)))
    exec(code, {})


@pytest.fixture(scope="session")
def lmplz() -> str:
    path = shutil.which("lmplz", path=os.pathsep.join([os.environ.get("PATH", ""), str(REPO / ".venv" / "bin")]))
    if path is None:
        pytest.fail("KenLM's lmplz is not on PATH nor in .venv/bin: run `make setup` (scripts/build_kenlm.sh)")
    return path


def build_arpa(lmplz: str, folder: Path, text: str, order: int = 3, name: str = "lm.arpa") -> Path:
    out = folder / name
    with open(out, "wb") as f:
        subprocess.run([lmplz, "-o", str(order), "--discount_fallback", "-S", "64M", "-T", str(folder)],
                       input=text.encode(), stdout=f, stderr=subprocess.DEVNULL, check=True)
    return out


@pytest.fixture(scope="session")
def one_line_arpa(lmplz, tmp_path_factory) -> Path:
    return build_arpa(lmplz, tmp_path_factory.mktemp("one_line"), ONE_LINE_CORPUS)


def run_cli(*args: str) -> int:
    return cli.main([str(a) for a in args])


# --- the fix on real lmplz output --------------------------------------------------------------


def test_one_line_corpus_fixed_loads_in_kenlm_and_decodes(one_line_arpa, tmp_path):
    import kenlm
    from pyctcdecode import build_ctcdecoder

    text = one_line_arpa.read_bytes()
    assert b"</s>" not in text
    report = arpa_check.check_arpa(one_line_arpa)
    assert not report.ok and report.one_line_corpus and report.has_bos and not report.has_eos
    assert any("one sentence per line" in note for note in report.notes)
    with pytest.raises(OSError):
        kenlm.Model(str(one_line_arpa))

    fixed = tmp_path / "fixed.arpa"
    result = arpa_fix.fix_arpa(one_line_arpa, fixed)
    assert result.changed and result.unigrams_after == result.unigrams_before + 1
    assert arpa_check.check_arpa(fixed).ok
    model = kenlm.Model(str(fixed))
    assert model.order == 3
    # KenLM scores sentences as the fixed file's n-grams and back-offs say, </s> included
    ngrams = arpa_ngrams(fixed)
    for sentence in ("the cat sat", "the dog sat on the mat", "mat the cat"):
        expected = arpa_sentence_score(ngrams, sentence, 3)
        assert model.score(sentence, bos=True, eos=True) == pytest.approx(expected, abs=1e-4), sentence

    # the acoustics prefer "cet" (not a word of the LM) by a little: without the LM the beam search
    # says so; with it, "cat" wins
    labels = ["", " ", "a", "c", "d", "e", "g", "h", "l", "m", "n", "o", "s", "t"]
    logits = _spell("the cat", labels)
    vowel = 2 * "the cat".index("a")
    logits[vowel, labels.index("a")], logits[vowel, labels.index("e")] = -0.9, -0.5
    assert build_ctcdecoder(labels).decode(logits, beam_width=16) == "the cet"
    decoder = build_ctcdecoder(labels, kenlm_model_path=str(fixed), alpha=0.5, beta=1.0)
    assert decoder.decode(logits, beam_width=16) == "the cat"


def arpa_ngrams(path: Path) -> dict[tuple[str, ...], tuple[float, float]]:
    """n-gram → (log10 prob, log10 back-off) read straight from an ARPA file."""
    ngrams, order = {}, 0
    for line in path.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
        elif order and line.strip() and not line.startswith("\\"):
            fields = line.split("\t")
            words = tuple(fields[1].split())
            ngrams[words] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    return ngrams


def arpa_sentence_score(ngrams: dict, sentence: str, order: int) -> float:
    """log10 P(sentence </s> | <s>) by the ARPA back-off rule (the oracle KenLM must agree with)."""
    def prob(context: tuple[str, ...], word: str) -> float:
        if (*context, word) in ngrams:
            return ngrams[(*context, word)][0]
        if not context:
            return ngrams[("<unk>",)][0]
        return ngrams.get(context, (0.0, 0.0))[1] + prob(context[1:], word)

    words, total = ["<s>", *sentence.split(), "</s>"], 0.0
    for k in range(1, len(words)):
        total += prob(tuple(words[max(0, k - order + 1):k]), words[k])
    return total


def _spell(text: str, labels: list[str]) -> np.ndarray:
    """Log-probs [T, V] that spell ``text``, a blank between characters."""
    frames = []
    for ch in text:
        frames += [labels.index(ch), 0]
    logits = np.full((len(frames), len(labels)), -8.0, dtype=np.float32)
    logits[np.arange(len(frames)), frames] = -0.01
    return logits


def test_output_is_byte_for_byte_the_blog_loop(one_line_arpa, tmp_path):
    ours, theirs = tmp_path / "ours.arpa", tmp_path / "theirs.arpa"
    arpa_fix.fix_arpa(one_line_arpa, ours)
    blog_loop(one_line_arpa, theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_idempotent_and_says_unchanged(one_line_arpa, tmp_path, capsys):
    once, twice = tmp_path / "once.arpa", tmp_path / "twice.arpa"
    arpa_fix.fix_arpa(one_line_arpa, once)
    assert run_cli(once, twice) == 0
    assert "unchanged" in capsys.readouterr().out
    assert twice.read_bytes() == once.read_bytes()
    result = arpa_fix.fix_arpa(once, once)  # in place, nothing to do
    assert not result.changed and once.read_bytes() == twice.read_bytes()


def test_in_place_fix(one_line_arpa, tmp_path):
    lm = tmp_path / "lm.arpa"
    shutil.copy(one_line_arpa, lm)
    arpa_fix.fix_arpa(lm, lm)
    assert arpa_check.check_arpa(lm).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.arpa"]


@pytest.mark.parametrize("unsupported", [{"copy_file_range": errno.EXDEV},
                                         {"copy_file_range": errno.EXDEV, "sendfile": errno.EINVAL}])
def test_copy_fallbacks(one_line_arpa, tmp_path, monkeypatch, unsupported):
    """copy_file_range refused (EXDEV: another file system), then sendfile too: read/write."""
    for name, code in unsupported.items():
        monkeypatch.setattr(os, name, _refuse(code))
    out, expected = tmp_path / "out.arpa", tmp_path / "expected.arpa"
    arpa_fix.fix_arpa(one_line_arpa, out)
    blog_loop(one_line_arpa, expected)
    assert out.read_bytes() == expected.read_bytes()


def _refuse(code: int):
    def refuse(*args):
        raise OSError(code, os.strerror(code))

    return refuse


def test_gzip_in_and_out(one_line_arpa, tmp_path):
    plain = tmp_path / "fixed.arpa"
    arpa_fix.fix_arpa(one_line_arpa, plain)
    gz_in = tmp_path / "in.arpa.gz"
    gz_in.write_bytes(gzip.compress(one_line_arpa.read_bytes()))
    for src, dst in [(gz_in, tmp_path / "a.arpa.gz"), (gz_in, tmp_path / "b.arpa"),
                     (one_line_arpa, tmp_path / "c.arpa.gz")]:
        arpa_fix.fix_arpa(src, dst)
        data = gzip.decompress(dst.read_bytes()) if dst.suffix == ".gz" else dst.read_bytes()
        assert data == plain.read_bytes(), (src.name, dst.name)
    assert arpa_check.check_arpa(tmp_path / "a.arpa.gz").ok


def test_pipe_input(one_line_arpa, tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(one_line_arpa.read_bytes()))
    writer.start()
    out = tmp_path / "out.arpa"
    arpa_fix.fix_arpa(fifo, out)
    writer.join()
    expected = tmp_path / "expected.arpa"
    blog_loop(one_line_arpa, expected)
    assert out.read_bytes() == expected.read_bytes()


def test_sentence_per_line_corpus_has_eos(lmplz, tmp_path, capsys):
    lm = build_arpa(lmplz, tmp_path, SENTENCES)
    report = arpa_check.check_arpa(lm)
    assert report.ok and report.has_eos and not report.one_line_corpus
    assert run_cli("--check", lm) == 0
    result = arpa_fix.fix_arpa(lm, tmp_path / "same.arpa")
    assert not result.changed and (tmp_path / "same.arpa").read_bytes() == lm.read_bytes()


TINY = "\\data\\\nngram 1={n}\nngram 2=1\n\n\\1-grams:\n0\t<s>\t0\n{eos}\n\\2-grams:\n-0.5\t<s> <s>\n\n\\end\\\n"


def test_ngram_1_equals_1(tmp_path):
    import kenlm

    src = tmp_path / "tiny.arpa"
    src.write_text(TINY.format(n=1, eos=""))
    ours, theirs = tmp_path / "ours.arpa", tmp_path / "theirs.arpa"
    arpa_fix.fix_arpa(src, ours)
    assert ours.read_text() == TINY.format(n=2, eos="0\t</s>\t0\n")
    blog_loop(src, theirs)
    assert "ngram 2=2\nngram 2=1" in theirs.read_text()  # the blog loop's str.replace hits both 1s
    assert arpa_check.check_arpa(ours).ok
    assert kenlm.Model(str(ours)).order == 2


def test_jit_and_python_paths_agree(one_line_arpa, lmplz, tmp_path):
    lm = build_arpa(lmplz, tmp_path, SENTENCES * 3 + ONE_LINE_CORPUS + "\n", order=4)
    for path in (one_line_arpa, lm):
        fast, slow = arpa_check.check_arpa(path), arpa_check.check_arpa(path, jit=False)
        assert fast.jit and not slow.jit
        assert (fast.counts, fast.has_bos, fast.has_eos, fast.bos_bigrams) == \
               (slow.counts, slow.has_bos, slow.has_eos, slow.bos_bigrams)


def test_jit_and_python_agree_on_mutated_files(lmplz, tmp_path, monkeypatch):
    """Random byte edits: the compiled scanner, in one thread or three, must never accept a line the
    Python check rejects, nor count differently."""
    monkeypatch.setattr(arpa_check, "_PARALLEL_MIN", 64)  # split even these small buffers between threads
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "b-c", "x1"]
    corpus = "".join(" ".join(rng.choices(words, k=rng.randint(2, 7))) + "\n" for _ in range(100))
    base = build_arpa(lmplz, tmp_path, corpus).read_bytes()
    mutated = tmp_path / "mutated.arpa"
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            pos, byte = rng.randrange(len(data)), rng.choice(b"\t\n -0.e5\\ab<>/s\r+9")
            edit = rng.randrange(3)
            if edit == 0:
                data[pos] = byte
            elif edit == 1:
                del data[pos]
            else:
                data.insert(pos, byte)
        mutated.write_bytes(bytes(data))
        expected = _outcome(mutated, jit=False)
        assert _outcome(mutated, jit=None, threads=1) == expected, bytes(data)
        assert _outcome(mutated, jit=None, threads=3) == expected, bytes(data)


def _outcome(path: Path, jit: bool | None, threads: int | None = None) -> tuple:
    try:
        report = arpa_check.check_arpa(path, jit=jit, threads=threads)
    except arpa.ArpaError as e:
        return ("error", e.line_no, e.message)
    return ("ok", report.counts, report.has_bos, report.has_eos, report.bos_bigrams)


def test_interrupt_leaves_nothing(one_line_arpa, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(arpa_fix, "_kernel_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        arpa_fix.fix_arpa(one_line_arpa, tmp_path / "out.arpa")
    assert list(tmp_path.iterdir()) == []


# --- malformed input ---------------------------------------------------------------------------

BASE = """\\data\\
ngram 1=6
ngram 2=3

\\1-grams:
-1.2\t<unk>\t0
0\t<s>\t-0.3
-0.7\tthe\t-0.2
-0.9\tcat\t-0.2
-0.9\tsat\t-0.2
-0.8\ton\t-0.2

\\2-grams:
-0.3\t<s> the
-0.4\tthe cat
-0.2\tcat sat

\\end\\
"""
BASE3 = BASE.replace("ngram 2=3", "ngram 2=3\nngram 3=1").replace(
    "\\end\\", "\\3-grams:\n-0.1\t<s> the cat\n\n\\end\\")
ORDER1 = "\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t<unk>\n0\t<s>\n-0.5\tword\n\n\\end\\\n"

# name: (file text, line --check reports, words in its message, what fixing says: the same (SAME),
# (line or None, words), or ACCEPTED (what an entry holds is for --check alone)). The line is the
# first problem's: for a section longer than its header says, its first entry beyond the count.
SAME, ACCEPTED = "same", None
MALFORMED = {
    "garbage bytes": ("\x00\x01\xfe garbage \xff\n" * 3, 1, "binary data", SAME),
    "missing data": (BASE.replace("\\data\\\n", ""), 1, "missing \\data\\", SAME),
    "count mismatch 1-grams": (BASE.replace("ngram 1=6", "ngram 1=7"), 12, "has 6 entries", SAME),
    "count mismatch 2-grams": (BASE.replace("ngram 2=3", "ngram 2=2"), 16, "has 3 entries", SAME),
    "fewer 2-grams than the header": (BASE.replace("ngram 2=3", "ngram 2=4"), 17, "has 3 entries", SAME),
    "a blank line inside the 2-grams": (BASE.replace("the cat\n", "the cat\n\n"), 16, "has 2 entries",
                                        (17, "the 2-grams section has 4 entries but the header says ngram 2=3")),
    "sections out of order": (BASE3.replace("\\3-grams:", "\\4-grams:"), 19, "expected \\3-grams:", SAME),
    "text after end": (BASE + "-1\tthe cat\n", 19, "text after \\end\\", (None, "text after \\end\\")),
    "truncated": (BASE[:BASE.index("the cat") + 3], 15, "truncated", (None, "missing \\end\\")),
    "positive log prob 1-grams": (BASE.replace("-0.9\tcat", "0.9\tcat"), 9, "positive log probability", SAME),
    "positive log prob 2-grams": (BASE.replace("-0.4\tthe cat", "0.4\tthe cat"), 15, "positive log", ACCEPTED),
    "missing end": (BASE.replace("\\end\\\n", ""), 18, "missing \\end\\", (None, "missing \\end\\")),
    "highest-order backoff": (BASE.replace("cat sat\n", "cat sat\t-0.5\n"), 16, "backoff -0.5", ACCEPTED),
    "only 1-grams": (ORDER1, 2, "at least a bigram model", SAME),
    "missing unigram": (BASE.replace("the cat\n", "the dog\n"), 15, "'dog' is not among the 1-grams", ACCEPTED),
    "more 1-grams than the header": (BASE.replace("ngram 1=6", "ngram 1=2").replace(
        "-0.8\ton\t-0.2\n", "".join(f"-3\tw{i}\t-0.1\n" for i in range(600))), 8, "has 605 entries", SAME),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed(name, tmp_path, capsys):
    text, line_no, words, fixing = MALFORMED[name]
    src = tmp_path / "bad.arpa"
    src.write_bytes(text.encode("latin-1"))
    assert run_cli("--check", src) == 2
    err = capsys.readouterr().err
    assert f"line {line_no}:" in err and words in err, err
    with pytest.raises(arpa.ArpaError) as slow:
        arpa_check.check_arpa(src, jit=False)
    assert slow.value.line_no == line_no  # the pure-Python path agrees

    dst = tmp_path / "out.arpa"
    if fixing is ACCEPTED:
        assert run_cli(src, dst) == 0
        return
    fix_line, fix_words = (line_no, words) if fixing == SAME else fixing
    assert run_cli(src, dst) == 2
    out, err = capsys.readouterr()
    assert "out.arpa" not in out and fix_words in err, err
    assert (f"line {fix_line}:" in err) if fix_line else ": line " not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arpa"]  # no output, no temp file


def with_eos(text: str) -> str:
    """The same file with a </s> 1-gram after <s> (KenLM refuses any file without one)."""
    text = text.replace("0\t<s>\t-0.3\n", "0\t<s>\t-0.3\n-1.5\t</s>\t0\n")
    return re.sub(r"ngram 1=(\d+)", lambda m: f"ngram 1={int(m.group(1)) + 1}", text, count=1)


# KenLM reads the number of entries the header says and skips a blank line among them; the ARPA
# format (and pyctcdecode's reading of the 1-grams) ends a section there, so --check refuses it
KENLM_LOADS = {"a blank line inside the 2-grams"}


def test_the_fix_on_a_small_file_is_what_the_blog_loop_is_known_to_write(tmp_path):
    """An oracle that is not code: the blog loop's output for BASE, written out by hand (ngram 1=
    raised by one, a </s> line copied from the <s> line right after it, nothing else touched)."""
    expected = BASE.replace("ngram 1=6", "ngram 1=7").replace("0\t<s>\t-0.3\n", "0\t<s>\t-0.3\n0\t</s>\t-0.3\n")
    src, ours, theirs = tmp_path / "base.arpa", tmp_path / "ours.arpa", tmp_path / "theirs.arpa"
    src.write_text(BASE)
    arpa_fix.fix_arpa(src, ours)
    blog_loop(src, theirs)
    assert ours.read_text() == theirs.read_text() == expected


@pytest.mark.parametrize("name", [n for n, case in MALFORMED.items() if "0\t<s>\t-0.3\n" in case[0]])
def test_kenlm_refuses_what_check_refuses(name, tmp_path):
    """KenLM itself is the oracle: every malformed file (given the </s> KenLM needs) fails to load in
    kenlm.Model exactly when --check exits 2; the well-formed base file loads and --check says 0."""
    import kenlm

    for text, malformed in ((with_eos(MALFORMED[name][0]), True), (with_eos(BASE), False)):
        path = tmp_path / "lm.arpa"
        path.write_bytes(text.encode("latin-1"))
        assert run_cli("--check", path) == (2 if malformed else 0)
        if malformed and name not in KENLM_LOADS:
            with pytest.raises(OSError):
                kenlm.Model(str(path))
        else:
            kenlm.Model(str(path))


def test_fix_refuses_truncated_gzip(one_line_arpa, tmp_path):
    data = gzip.compress(one_line_arpa.read_bytes())
    src = tmp_path / "cut.arpa.gz"
    src.write_bytes(data[: len(data) - 30])
    assert run_cli(src, tmp_path / "out.arpa") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.arpa.gz"]


def test_crlf_and_binary_lm_are_named(tmp_path, capsys):
    crlf = tmp_path / "crlf.arpa"
    crlf.write_bytes(BASE.replace("\n", "\r\n").encode())
    assert run_cli("--check", crlf) == 2
    assert "CRLF" in capsys.readouterr().err
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\x00\x00")
    assert run_cli("--check", binary) == 2
    assert "KenLM binary" in capsys.readouterr().err


# --- the command line --------------------------------------------------------------------------


def test_cli_exit_codes_and_no_heavy_imports(one_line_arpa, tmp_path):
    out = tmp_path / "out.arpa"
    for args, code in [([one_line_arpa, out], 0), (["--check", one_line_arpa], 1), (["--check", out], 0)]:
        proc = subprocess.run([sys.executable, "-X", "importtime", *FIX_COMMAND, *map(str, args)],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == code, proc.stderr
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "transformers", "torchaudio"}, args
        if "--check" not in args:
            assert "numpy" not in imported and "numba" not in imported  # fixing is stdlib only


# --- fixing counts every section, on every input path ------------------------------------------


def synthetic_arpa(trigrams: int = 30_000, eos: bool = False, trigram_count: int | None = None) -> bytes:
    """A 3-gram ARPA whose sections span many of the fixer's read chunks (about 1 MB)."""
    words = [f"w{i}" for i in range(100)]
    unigrams = ["-1\t<unk>\t0", "0\t<s>\t-0.3", *([] if not eos else ["-1.5\t</s>\t0"])]
    unigrams += [f"-2.{i}\t{w}\t-0.1" for i, w in enumerate(words)]
    bigrams = [f"-1.{i % 10}\t{a} {b}\t-0.2" for i, (a, b) in enumerate((a, b) for a in words for b in words)]
    tri = [f"-0.{i % 10}\t{words[i % 100]} {words[i // 100 % 100]} {words[i // 10_000 % 100]}"
           for i in range(trigrams)]
    head = (f"\\data\\\nngram 1={len(unigrams)}\nngram 2={len(bigrams)}\n"
            f"ngram 3={trigram_count if trigram_count is not None else len(tri)}\n\n")
    body = "".join(f"\n\\{n}-grams:\n" + "\n".join(lines) + "\n" for n, lines in ((1, unigrams), (2, bigrams), (3, tri)))
    return (head + body.lstrip("\n") + "\n\\end\\\n").encode()


def fix_every_way(src_bytes: bytes, tmp_path: Path) -> list[tuple[str, int, str]]:
    """Fix the same ARPA from a plain file, gzip, a pipe, into gzip and in place: (way, exit, stderr)."""
    import contextlib
    import io

    tmp_path.mkdir()
    original, expected = tmp_path / "original.arpa", tmp_path / "expected.arpa"
    original.write_bytes(src_bytes)
    blog_loop(original, expected)
    outcomes = []
    for way in ("plain", "gzip in", "pipe", "gzip out", "in place"):
        folder = tmp_path / way.replace(" ", "_")
        folder.mkdir()
        src, dst = folder / "in.arpa", folder / "out.arpa"
        if way == "gzip in":
            src = folder / "in.arpa.gz"
            src.write_bytes(gzip.compress(src_bytes))
        elif way == "pipe":
            src = folder / "in.fifo"
            os.mkfifo(src)
            threading.Thread(target=lambda s=src: s.write_bytes(src_bytes), daemon=True).start()
        else:
            src.write_bytes(src_bytes)
        if way == "gzip out":
            dst = folder / "out.arpa.gz"
        if way == "in place":
            dst = src
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = run_cli(src, dst)
        outcomes.append((way, code, err.getvalue().split(": ", 1)[-1]))
        left = sorted(p.name for p in folder.iterdir())
        if code != 0:  # nothing written, no temporary, the input untouched
            assert left == [src.name], (way, left)
            if way == "in place":
                assert src.read_bytes() == src_bytes
        else:
            data = dst.read_bytes()
            fixed = gzip.decompress(data) if dst.suffix == ".gz" else data
            assert fixed == expected.read_bytes(), way
    return outcomes


def test_fixing_validates_every_section_on_every_path(tmp_path):
    good = synthetic_arpa()
    (tmp_path / "good.arpa").write_bytes(good)
    assert arpa_check.check_arpa(tmp_path / "good.arpa").counts == [102, 10_000, 30_000]
    assert all(code == 0 for _, code, _ in fix_every_way(good, tmp_path / "good"))
    bad = synthetic_arpa(trigram_count=30_001)  # one 3-gram fewer than the header says
    outcomes = fix_every_way(bad, tmp_path / "bad")
    messages = {err for _, _, err in outcomes}
    assert all(code == 2 for _, code, _ in outcomes) and len(messages) == 1, outcomes
    (tmp_path / "bad.arpa").write_bytes(bad)
    with pytest.raises(arpa.ArpaError) as checked:
        arpa_check.check_arpa(tmp_path / "bad.arpa")
    assert f"line {checked.value.line_no}: the 3-grams section has 30000 entries but the header says " \
           "ngram 3=30001" in messages.pop()


def test_fixing_in_place_a_file_with_eos_still_counts(tmp_path):
    lm = tmp_path / "lm.arpa"
    lm.write_bytes(synthetic_arpa(eos=True, trigram_count=29_999))
    before = lm.read_bytes()
    with pytest.raises(arpa.ArpaError, match="has 30000 entries"):
        arpa_fix.fix_arpa(lm, lm)
    assert lm.read_bytes() == before


@pytest.mark.parametrize("trigram_count", [30_000, 30_002])
def test_section_count_does_not_depend_on_read_sizes(tmp_path, trigram_count):
    data = synthetic_arpa(trigram_count=trigram_count)
    start = data.index(b"\\2-grams:\n") + len(b"\\2-grams:\n")
    line_no = data[:start].count(b"\n") + 1

    def outcome(sizes) -> str:
        counter = arpa_fix._SectionCounter([102, 10_000, trigram_count], line_no)
        pos = start
        try:
            for size in sizes:
                counter.feed(data[pos:pos + size])
                pos += size
                if pos >= len(data):
                    break
            counter.finish()
        except arpa.ArpaError as e:
            return str(e)
        return "ok"

    rng = random.Random(trigram_count)
    whole = outcome([len(data)])
    assert whole == ("ok" if trigram_count == 30_000 else outcome([1 << 20] * 2))
    for sizes in ([1] * len(data), [rng.randint(1, 5000) for _ in range(len(data))], [7, 4093] * len(data)):
        assert outcome(sizes) == whole


def test_blank_lines_of_spaces_between_sections_are_accepted(tmp_path):
    """KenLM skips lines of only whitespace before a section line: fixing must not refuse them."""
    src = tmp_path / "spaced.arpa"
    src.write_text(BASE3.replace("-0.2\tcat sat\n\n", "-0.2\tcat sat\n\n \t\n").replace("\n\n\\end", "\n\n  \n\\end"))
    assert arpa_check.check_arpa(src).counts == [6, 3, 1]
    for sizes in ([1 << 20], [1] * 400, [3, 5] * 200):  # whatever the read sizes
        counter = arpa_fix._SectionCounter([6, 3, 1], 14)
        data, pos = src.read_bytes(), src.read_bytes().index(b"\\2-grams:\n") + len(b"\\2-grams:\n")
        for size in sizes:
            counter.feed(data[pos:pos + size])
            pos += size
        counter.finish()
    assert run_cli(src, tmp_path / "out.arpa") == 0
