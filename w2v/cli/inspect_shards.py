"""The listening check: a page to hear random samples exactly as training will (16 kHz), with stats.

    w2v-inspect-shards DIR --n 20 --out REPORT_DIR

Writes REPORT_DIR/index.html (an audio player, transcript, duration and source per random sample),
REPORT_DIR/durations.png (histogram), hours, utterance count, duration percentiles and the
character inventory with counts, so you can see which symbols to normalise away.
"""

import argparse
import html
import json
import random
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from w2v.config import ConfigError
from w2v.data.decode import decode_member
from w2v.flags import ArgumentParser
from w2v.shards.index import SAMPLE_RATE, read_index
from w2v.shards.tar import iter_tar_samples


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="w2v-inspect-shards", description=__doc__)
    p.add_argument("dir", help="a folder made by w2v-make-shards")
    p.add_argument("--n", type=int, default=20, help="random samples to listen to")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="the training YAML whose text normalisation to apply (default: "
                                                  "train.py's defaults)")
    p.add_argument("--vocab", default=None, help="a vocab.json (a model's or a run's): which characters of these "
                                                 "transcripts, normalised, it lacks (they become [UNK])")
    return p.parse_args(argv)


def training_view(shard_dir: Path, config: str | None, vocab_file: str | None) -> dict:
    """What training makes of these transcripts: the normaliser's vocabulary (its characters with
    their counts) and, with a vocab.json, the normalised characters outside it (→ [UNK])."""
    from w2v.config import read_yaml
    from w2v.data.labels import char_counts, vocabulary_from_shards
    from w2v.shards.spec import select_shards
    from w2v.text import TextNormalizer, Vocabulary

    normalizer = TextNormalizer.from_config(read_yaml(config) if config else {})
    shards = select_shards(str(shard_dir))
    vocab = vocabulary_from_shards(shards, normalizer)
    counts = char_counts(shards[0].columns, normalizer, [s.position for s in shards])
    view = {"normalised_by": config or "train.py's defaults", "vocabulary": vocab, "counts": counts, "unknown": {}}
    if vocab_file:
        given = Vocabulary.load(vocab_file, normalizer)
        view["unknown"] = dict(given.unknown_chars(list(shards[0].columns.texts)).most_common())
        view["vocab_file"] = vocab_file
    return view


def char_name(ch: str) -> str:
    if ch == " ":
        return "SPACE"
    return unicodedata.name(ch, f"U+{ord(ch):04X}")


def duration_stats(durations: np.ndarray) -> dict:
    qs = [0, 5, 25, 50, 75, 95, 100]
    return {f"p{q}": float(np.percentile(durations, q)) for q in qs} | {"mean": float(durations.mean())}


def save_histogram(durations: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(durations, bins=min(60, max(5, len(durations) // 5)), color="#4477aa")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("utterances")
    ax.set_title(f"{len(durations)} utterances, {durations.sum() / 3600:.2f} h")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pick_samples(index: dict, n: int, seed: int) -> dict[str, set[str]]:
    """shard name → keys to extract, chosen uniformly at random over all samples."""
    every = [(s["name"], k) for s in index["shards"] for k in s["keys"]]
    chosen = random.Random(seed).sample(every, min(n, len(every)))
    by_shard: dict[str, set[str]] = {}
    for shard, key in chosen:
        by_shard.setdefault(shard, set()).add(key)
    return by_shard


def extract(shard_dir: Path, by_shard: dict[str, set[str]], audio_dir: Path) -> list[dict]:
    rows = []
    for shard, keys in sorted(by_shard.items()):
        for key, parts in iter_tar_samples(shard_dir / shard):
            if key not in keys:
                continue
            ext = "flac" if "flac" in parts else "wav"
            wave = decode_member(parts[ext])  # exactly as the loader decodes it
            sf.write(audio_dir / f"{key}.wav", wave, SAMPLE_RATE, subtype="PCM_16")  # WAV: every browser plays it
            meta = json.loads(parts["json"])
            rows.append({"key": key, "shard": shard, **meta, "file": f"audio/{key}.wav"})
    return rows


def render(index: dict, rows: list[dict], stats: dict, chars: Counter, shard_dir: Path, view: dict) -> str:
    esc = html.escape
    trained = "\n".join(
        f"<tr><td><code>{esc(repr(ch))}</code></td><td>{esc(char_name(ch))}</td><td>{view['counts'].get(ch, '')}</td></tr>"
        for ch in view["vocabulary"].tokens if len(ch) == 1 and ch != "|")
    unknown = "".join(f"<li><code>{esc(repr(ch))}</code> {esc(char_name(ch))} ×{n}</li>" for ch, n in view["unknown"].items())
    unknown_part = (f"<h3>Outside {esc(view['vocab_file'])} (become [UNK])</h3><ul>{unknown or '<li>none</li>'}</ul>"
                    if "vocab_file" in view else "")
    samples = "\n".join(
        f"<tr><td><audio controls preload='none' src='{esc(r['file'])}'></audio></td>"
        f"<td>{esc(r['text'])}</td><td>{r['duration']:.2f}</td><td>{esc(str(r['source']))}</td>"
        f"<td>{r.get('orig_sample_rate', '')}</td></tr>"
        for r in rows
    )
    inventory = "\n".join(
        f"<tr><td><code>{esc(repr(ch))}</code></td><td>{esc(char_name(ch))}</td><td>{n}</td></tr>"
        for ch, n in chars.most_common()
    )
    pct = " ".join(f"{k}={v:.2f}s" for k, v in stats.items())
    skipped = index.get("skipped", {})
    return f"""<!doctype html><meta charset="utf-8"><title>shards: {esc(str(shard_dir))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 8px;vertical-align:middle}}
tr:nth-child(even){{background:#f3f3f3}}</style>
<h1>{esc(str(shard_dir))}</h1>
<p>{index['num_samples']} utterances, {index['total_seconds'] / 3600:.3f} h in {index['num_shards']} shards
({index.get('codec', '?')}, 16 kHz mono). Inputs {index.get('inputs', '?')}, skipped {sum(skipped.values())}
{esc(str(skipped)) if skipped else ''}.</p>
<p>Durations: {pct}</p>
<img src="durations.png" alt="duration histogram">
<h2>{len(rows)} random samples, as training hears them</h2>
<table><tr><th>audio</th><th>transcript (as stored)</th><th>s</th><th>source</th><th>orig Hz</th></tr>
{samples}</table>
<h2>What training uses: the vocabulary after normalisation ({esc(view['normalised_by'])})</h2>
<p>{len(view['vocabulary'])} tokens: [PAD], [UNK], | (the space) and these characters.</p>
<table><tr><th>char</th><th>name</th><th>count</th></tr>{trained}</table>
{unknown_part}
<h2>Character inventory as stored ({len(chars)} symbols, before normalisation)</h2>
<table><tr><th>char</th><th>name</th><th>count</th></tr>{inventory}</table>
"""


def main(argv=None) -> int:
    args = parse_args(argv)
    shard_dir, out = Path(args.dir), Path(args.out)
    try:
        index = read_index(shard_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    durations = np.array([d for s in index["shards"] for d in s["durations"]], dtype=np.float64)
    if len(durations) == 0:
        print(f"error: {shard_dir} holds no samples", file=sys.stderr)
        return 2
    try:
        view = training_view(shard_dir, args.config, args.vocab)
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (out / "audio").mkdir(parents=True, exist_ok=True)
    chars = Counter(ch for s in index["shards"] for t in s["texts"] for ch in t)
    stats = duration_stats(durations)
    save_histogram(durations, out / "durations.png")
    rows = extract(shard_dir, pick_samples(index, args.n, args.seed), out / "audio")
    (out / "index.html").write_text(render(index, rows, stats, chars, shard_dir, view), encoding="utf-8")
    print(f"{index['num_samples']} utterances, {durations.sum() / 3600:.3f} h; "
          f"median {stats['p50']:.2f} s, p95 {stats['p95']:.2f} s, max {stats['p100']:.2f} s; "
          f"{len(chars)} distinct characters as stored")
    letters = "".join(tok for tok in view["vocabulary"].tokens if len(tok) == 1 and tok != "|")
    print(f"training vocabulary, normalised by {view['normalised_by']}: {len(view['vocabulary'])} tokens; "
          f"characters: {letters}")
    if "vocab_file" in view:
        outside = ", ".join(f"{ch!r}×{n}" for ch, n in view["unknown"].items()) or "none"
        print(f"outside {view['vocab_file']} (→ [UNK]): {outside}")
    print(f"report: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
