"""The demo path end to end, cut down (dozens of utterances, a few updates) so it cannot rot."""

import json

import pytest
from transformers import pipeline

from tests.conftest import run_tool
from w2v.metrics import ErrorCounts

STAGES = ["corpus", "shards", "train", "lm", "tune", "test", "export"]


def test_small_demo_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "demo"
    proc = run_tool("demo.py", "--out", out, "--small", check=True, timeout=900)
    report = json.loads((out / "report.json").read_text())
    # the reported test WERs are the per-utterance errors pooled: greedy and LM (rows' hyp) alike
    rows = [json.loads(line) for line in (out / "test_errors.jsonl").read_text().splitlines()]
    refs = [r["ref"] for r in rows]
    assert report["greedy"]["wer"] == pytest.approx(ErrorCounts.of(refs, [r["greedy"] for r in rows]).wer)
    assert report["lm"]["wer"] == pytest.approx(ErrorCounts.of(refs, [r["hyp"] for r in rows]).wer)
    assert report["lm"]["wer"] == pytest.approx(sum(r["word_edits"] for r in rows) / sum(r["words"] for r in rows))
    # --tune on dev: every grid point scored, the lowest (WER, CER) chosen, and test decoded with it
    dev = json.loads((out / "eval_dev.json").read_text())
    best = min(dev["grid"], key=lambda p: (p["wer"], p["cer"]))
    assert len(dev["grid"]) == len({(p["alpha"], p["beta"]) for p in dev["grid"]}) > 1
    assert (dev["lm"]["wer"], dev["lm"]["cer"]) == (best["wer"], best["cer"])
    assert (report["lm"]["alpha"], report["lm"]["beta"]) == (dev["lm"]["alpha"], dev["lm"]["beta"])
    assert list(report["minutes"]) == [*STAGES, "total"]
    assert report["test_utterances"] == 8 and report["updates"] == 6
    assert (out / "curves.png").stat().st_size > 1000
    assert "| greedy |" in (out / "report.md").read_text() and "| greedy |" in proc.stdout
    # every test utterance has its errors line; dev and test sentences never enter the LM text
    assert len((out / "test_errors.jsonl").read_text().splitlines()) == 8
    lm_text = set((out / "corpus" / "lm.txt").read_text().splitlines())
    for split in ("dev", "test"):
        rows = (out / "corpus" / f"{split}.tsv").read_text().splitlines()[1:]
        assert not {r.split("\t")[2] for r in rows} & lm_text
    # the exported model decodes with the LM in a plain transformers pipeline
    asr = pipeline("automatic-speech-recognition", model=str(out / "train" / "final"), device=-1)
    assert asr.type == "ctc_with_lm"
    # a second run reuses every stage
    again = run_tool("demo.py", "--out", out, "--small", check=True)
    assert again.stdout.count("reused") == len(STAGES)
