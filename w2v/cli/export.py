"""One folder with the model, its processor and normaliser, and the LM with its tuned weights.

    w2v-export runs/x/final --lm runs/lm5 --tuned dev.json --out models/x-lm
    w2v-export runs/x/final --lm runs/lm5 --alpha 0.6 --beta 1.0 --out models/x-lm

`--tuned` reads the alpha and beta that `w2v-evaluate --tune --json FILE` chose. The folder is what
`transformers.pipeline("automatic-speech-recognition", model=DIR)` loads with LM decoding
(`Wav2Vec2ProcessorWithLM`, which needs the extra `w2v[pipeline-lm]`: pyctcdecode and kenlm), and
what `w2v-transcribe DIR …` decodes with w2v's own decoder (its `language_model/`, the ARPA there and
the weights in `language_model/attrs.json`), with or without that extra. Written under a temporary name and renamed when complete; an existing
`--out` is refused unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from w2v.atomic import atomic_dir
from w2v.flags import ArgumentParser
from w2v.lm.decode import (
    PIPELINE_LM_MISSING,
    export_processor_with_lm,
    find_lm_file,
    load_unigrams,
    pipeline_lm_available,
)

MODEL_FILES = ("config.json", "vocab.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="w2v-export", description=__doc__.split("\n\n")[0], epilog=__doc__)
    p.add_argument("model", help="a model folder (train.py's final/)")
    p.add_argument("--lm", required=True, help="a w2v-build-lm folder or an ARPA file")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--tuned", help="the JSON of `w2v-evaluate --tune --json`: its chosen alpha and beta")
    weights.add_argument("--alpha", type=float, help="LM weight (with --beta)")
    p.add_argument("--beta", type=float, default=None, help="word bonus (with --alpha)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p.parse_args(argv)


def tuned_weights(path: Path) -> tuple[float, float]:
    """The alpha and beta that `w2v-evaluate --tune --json` recorded as its best point."""
    if not path.is_file():
        raise ValueError(f"--tuned {path}: no such file")
    try:
        best = json.loads(path.read_text())["lm"]
        return float(best["alpha"]), float(best["beta"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"--tuned {path}: not the JSON of `w2v-evaluate --lm … --json` (no lm.alpha/lm.beta)") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    model, out = Path(args.model), Path(args.out)
    try:
        missing = [name for name in MODEL_FILES if not (model / name).is_file()]
        if not model.is_dir():
            raise ValueError(f"{model}: no such model folder")
        if missing:
            raise ValueError(f"{model}: not a model folder (no {', '.join(missing)})")
        if args.tuned:
            alpha, beta = tuned_weights(Path(args.tuned))
        elif args.beta is None:
            raise ValueError("--alpha needs --beta (or give --tuned)")
        else:
            alpha, beta = args.alpha, args.beta
        lm_file = find_lm_file(args.lm)
        unigrams = load_unigrams(lm_file)
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} exists: pass --overwrite to replace it")
        if not pipeline_lm_available():
            raise ValueError(PIPELINE_LM_MISSING)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with atomic_dir(out) as tmp:
        tmp.rmdir()
        shutil.copytree(model, tmp, ignore=shutil.ignore_patterns("language_model", "alphabet.json"))
        export_processor_with_lm(tmp, lm_file, alpha, beta, unigrams)
    print(f"{out}: {model} with {lm_file.name} (alpha {alpha:g}, beta {beta:g}); "
          f"pipeline() and w2v-transcribe decode with it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
