#!/usr/bin/env python
"""Build a KenLM n-gram LM from text or from the transcripts in shards.

    python tools/build_lm.py --text FILE --order 5 --out DIR [--binary] [--prune 0 0 1]
    python tools/build_lm.py --shards shards/train --order 5 --out DIR

Writes DIR/corpus.txt (one normalised sentence per line), DIR/<order>gram.arpa (checked, and fixed
if it ever lacked </s>), DIR/unigrams.txt, and with --binary DIR/<order>gram.bin (trie, -q 8 -b 8).
The text is normalised exactly like the training transcripts (pass the training --config to use
its lower_case / chars_to_ignore / replacements).
"""

import argparse
import sys
from pathlib import Path

import _path  # noqa: F401
import yaml

from w2v.lm import build_lm, read_text_lines
from w2v.text import TextNormalizer


def normalizer_from(config: str | None) -> TextNormalizer:
    if not config:
        return TextNormalizer()
    values = yaml.safe_load(Path(config).read_text()) or {}
    kwargs = {"lower": values.get("lower_case", True)}
    if values.get("chars_to_ignore") is not None:
        kwargs["chars_to_ignore"] = values["chars_to_ignore"]
    if values.get("replacements") is not None:
        kwargs["replacements"] = values["replacements"]
    return TextNormalizer(**kwargs)


def shard_texts(spec: str, index: str | None):
    from w2v.data import resolve_shards

    for shard in resolve_shards(spec, index):
        yield from shard.texts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a text file, one sentence per line (.gz allowed)")
    src.add_argument("--shards", help="a shard spec: their transcripts become the LM text")
    p.add_argument("--index", default=None, help="index.json for pipe:/URL shards")
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--prune", type=int, nargs="*", default=None, help="lmplz --prune thresholds per order")
    p.add_argument("--binary", action="store_true", help="also build a trie binary (-q 8 -b 8)")
    p.add_argument("--memory", default="20%", help="lmplz -S")
    p.add_argument("--config", default=None, help="training YAML whose text normalisation to use")
    args = p.parse_args(argv)
    if args.text and not Path(args.text).is_file():
        print(f"error: {args.text}: no such file", file=sys.stderr)
        return 2
    texts = read_text_lines(Path(args.text)) if args.text else shard_texts(args.shards, args.index)
    try:
        result = build_lm(texts, Path(args.out), args.order, normalizer_from(args.config), args.prune,
                          args.binary, args.memory)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = result.corpus
    print(f"corpus: {c.sentences} sentences, {c.words} words ({c.skipped_empty} empty after normalisation, "
          f"skipped) → {Path(args.out) / 'corpus.txt'}")
    print(f"{args.order}-gram ARPA: {result.arpa} (n-grams per order {result.counts})"
          + (" [--discount_fallback: small corpus]" if result.discount_fallback else ""))
    if result.fixed_eos:
        print("the ARPA lacked </s> and was fixed")
    if result.binary:
        print(f"binary: {result.binary}")
    print(f"unigrams: {result.unigrams}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
