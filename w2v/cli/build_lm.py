"""Build a KenLM n-gram LM from text or from the transcripts in shards.

    w2v-build-lm --text FILE --order 5 --out DIR [--binary] [--prune 0 0 1]
    w2v-build-lm --shards shards/train --order 5 --out DIR

Writes DIR/corpus.txt (one normalised sentence per line), DIR/<order>gram.arpa (checked for
what KenLM requires), DIR/unigrams.txt, and with --binary DIR/<order>gram.bin (trie, -q 8 -b 8).
The text is normalised exactly like the training transcripts (pass the training --config to use
its lower_case / chars_to_ignore / replacements).
"""

import sys
from pathlib import Path

from w2v.config import read_yaml
from w2v.flags import ArgumentParser
from w2v.lm.arpa import ArpaError
from w2v.lm.build import build_lm, read_text_lines
from w2v.shards.spec import select_shards
from w2v.text import TextNormalizer


def shard_texts(shards):
    """The transcripts of the selected shards, one shard at a time (from their memory-mapped columns)."""
    for shard in shards:
        yield from shard.columns.texts.slice(shard.start, shard.start + shard.size)


def main(argv=None) -> int:
    p = ArgumentParser(prog="w2v-build-lm", description=__doc__)
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
    p.add_argument("--overwrite", action="store_true", help="replace the LM a non-empty --out folder holds")
    args = p.parse_args(argv)
    if args.order < 2:  # before any work: KenLM loads no 1-gram model
        print(f"error: --order {args.order}: KenLM needs at least a bigram model (--order 2 or more)", file=sys.stderr)
        return 2
    if args.text and not Path(args.text).is_file():
        print(f"error: {args.text}: no such file", file=sys.stderr)
        return 2
    try:
        texts = read_text_lines(Path(args.text)) if args.text else shard_texts(select_shards(args.shards, args.index))
        normalizer = TextNormalizer.from_config(read_yaml(args.config) if args.config else {})
        result = build_lm(texts, Path(args.out), args.order, normalizer, args.prune,
                          args.binary, args.memory, args.overwrite)
    except (ValueError, FileExistsError, ArpaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = result.corpus
    print(f"corpus: {c.sentences} sentences, {c.words} words ({c.skipped_empty} empty after normalisation, "
          f"skipped) → {Path(args.out) / 'corpus.txt'}")
    print(f"{args.order}-gram ARPA: {result.arpa} (n-grams per order {result.counts})"
          + (" [--discount_fallback: small corpus]" if result.discount_fallback else ""))
    if result.binary:
        print(f"binary: {result.binary}")
    print(f"unigrams: {result.unigrams}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
