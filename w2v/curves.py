"""Training curves from a run's metrics.jsonl: loss and learning rate, eval WER/CER, against updates.

train.py redraws OUTPUT_DIR/curves.png after each evaluation; for a run in progress or a finished
one, `python -m w2v.curves OUTPUT_DIR` draws it from OUTPUT_DIR/metrics.jsonl (`--out FILE.png` to
put it elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """The logging records and the evaluation records of a metrics.jsonl (a line cut short by a
    crash is passed over)."""
    steps, evals = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval_wer" in record:
            evals.append(record)
        elif "loss" in record:
            steps.append(record)
    return steps, evals


def _finite(records: list[dict], key: str) -> tuple[list, list]:
    pairs = [(r["update"], r[key]) for r in records if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return [u for u, _ in pairs], [v for _, v in pairs]


def plot_curves(steps: list[dict], evals: list[dict], path: Path) -> Path:
    """loss (log scale) and learning rate | eval WER and CER (%), against the update, as a PNG
    written atomically (a reader never sees half a file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(*_finite(steps, "loss"), color="tab:blue")
    left.set_xlabel("update")
    left.set_ylabel("CTC loss per label", color="tab:blue")
    left.set_yscale("log")
    lr = left.twinx()
    lr.plot(*_finite(steps, "lr"), color="tab:gray", linewidth=0.8)
    lr.set_ylabel("learning rate", color="tab:gray")
    for key, name in (("eval_wer", "WER"), ("eval_cer", "CER")):
        updates, values = _finite(evals, key)
        right.plot(updates, [100 * v for v in values], marker="o" if len(values) < 30 else None, label=name)
    right.set_xlabel("update")
    right.set_ylabel("eval, greedy (%)")
    if evals:
        right.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    from w2v.flags import ArgumentParser

    p = ArgumentParser(prog="python -m w2v.curves", description=__doc__)
    p.add_argument("run", help="a train.py OUTPUT_DIR (its metrics.jsonl)")
    p.add_argument("--out", default=None, help="the PNG (default: OUTPUT_DIR/curves.png)")
    args = p.parse_args(argv)
    metrics = Path(args.run) / "metrics.jsonl"
    if not metrics.is_file():
        print(f"error: {metrics}: no such file (is {args.run} a train.py output folder?)", file=sys.stderr)
        return 2
    out = plot_curves(*read_metrics(metrics), Path(args.out) if args.out else Path(args.run) / "curves.png")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
