"""The demo path end to end, cut down (dozens of utterances, a few updates) so it cannot rot."""

import json

from transformers import pipeline

from tests.conftest import run_tool

STAGES = ["corpus", "shards", "train", "lm", "tune", "test", "export"]


def test_small_demo_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "demo"
    proc = run_tool("demo.py", "--out", out, "--small", check=True, timeout=900)
    report = json.loads((out / "report.json").read_text())
    for key in ("greedy", "lm"):
        assert 0.0 <= report[key]["wer"] and 0.0 <= report[key]["cer"]
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
