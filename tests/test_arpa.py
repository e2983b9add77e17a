"""w2v.lm.arpa_fix, w2v.lm.arpa_check and tools/fix_arpa.py: the </s> fix, checking, and real KenLM / pyctcdecode on the result."""

from __future__ import annotations

import errno
import gzip
import importlib.util
import os
import random
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
FIX_TOOL = REPO / "tools" / "fix_arpa.py"
ONE_LINE_CORPUS = "the cat sat on the mat the dog sat on the log"  # no newline: lmplz writes no </s>
SENTENCES = "the cat sat on the mat\nthe dog sat on the log\n"


def _load_cli():
    spec = importlib.util.spec_from_file_location("fix_arpa_cli", FIX_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli()


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
    assert model.score("the cat sat", bos=True, eos=True) < 0

    labels = ["", " ", "a", "c", "d", "e", "g", "h", "l", "m", "n", "o", "s", "t"]
    decoder = build_ctcdecoder(labels, kenlm_model_path=str(fixed), alpha=0.5, beta=1.0)
    logits = _spell("the cat", labels)
    assert decoder.decode(logits, beam_width=16) == "the cat"


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
ORDER1 = "\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t<unk>\n0\t<s>\n-0.5\tword\n\n\\end\\\n"

# name: (file text, line --check reports, whether fixing sees it too, words in the message)
MALFORMED = {
    "garbage bytes": ("\x00\x01\xfe garbage \xff\n" * 3, 1, True, "binary data"),
    "missing data": (BASE.replace("\\data\\\n", ""), 1, True, "missing \\data\\"),
    "count mismatch 1-grams": (BASE.replace("ngram 1=6", "ngram 1=7"), 12, True, "has 6 entries"),
    "count mismatch 2-grams": (BASE.replace("ngram 2=3", "ngram 2=2"), 17, False, "has 3 entries"),
    "truncated": (BASE[:BASE.index("the cat") + 3], 15, True, "truncated"),
    "positive log prob 1-grams": (BASE.replace("-0.9\tcat", "0.9\tcat"), 9, True, "positive log probability"),
    "positive log prob 2-grams": (BASE.replace("-0.4\tthe cat", "0.4\tthe cat"), 15, False, "positive log"),
    "missing end": (BASE.replace("\\end\\\n", ""), 18, True, "missing \\end\\"),
    "highest-order backoff": (BASE.replace("cat sat\n", "cat sat\t-0.5\n"), 16, False, "backoff -0.5"),
    "only 1-grams": (ORDER1, 2, True, "at least a bigram model"),
    "missing unigram": (BASE.replace("the cat\n", "the dog\n"), 15, False, "'dog' is not among the 1-grams"),
    "more 1-grams than the header": (BASE.replace("ngram 1=6", "ngram 1=2").replace(
        "-0.8\ton\t-0.2\n", "".join(f"-3\tw{i}\t-0.1\n" for i in range(600))), 611, True, "has 605 entries"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed(name, tmp_path, capsys):
    text, line_no, fix_sees_it, words = MALFORMED[name]
    src = tmp_path / "bad.arpa"
    src.write_bytes(text.encode("latin-1"))
    assert run_cli("--check", src) == 2
    err = capsys.readouterr().err
    assert f"line {line_no}:" in err and words in err, err
    with pytest.raises(arpa.ArpaError) as slow:
        arpa_check.check_arpa(src, jit=False)
    assert slow.value.line_no == line_no  # the pure-Python path agrees

    dst = tmp_path / "out.arpa"
    if fix_sees_it:
        assert run_cli(src, dst) == 2
        assert "out.arpa" not in capsys.readouterr().out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arpa"]  # no output, no temp file
    else:  # fixing parses only the header and the 1-grams: the bulk is copied as it is
        assert run_cli(src, dst) == 0


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
        proc = subprocess.run([sys.executable, "-X", "importtime", str(FIX_TOOL), *map(str, args)],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == code, proc.stderr
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "transformers", "torchaudio"}, args
        if "--check" not in args:
            assert "numpy" not in imported and "numba" not in imported  # fixing is stdlib only
