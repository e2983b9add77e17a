"""LibriSpeech: a split folder of `SPK/CHAP/SPK-CHAP-NNNN.flac` and `SPK/CHAP/SPK-CHAP.trans.txt`.

Every chapter folder is read, with or without its transcript file: audio with no transcript line
(a chapter whose `.trans.txt` is missing included) is yielded as `no_transcript`, so it is counted
and listed, never lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from w2v.shards.utterance import Corpus, CorpusError, Keys, Utterance, decoded_lines, text_problem


class LibriSpeechCorpus(Corpus):
    format = "librispeech"

    def __init__(self, root: Path):
        super().__init__(root)
        self.chapters = sorted({p.parent for p in root.glob("*/*/*.trans.txt")} | {p.parent for p in root.glob("*/*/*.flac")})
        if not any(root.glob("*/*/*.trans.txt")):
            raise CorpusError(f"{root}: no SPK/CHAP/*.trans.txt files (is this a LibriSpeech split folder?)")

    def utterances(self) -> Iterator[Utterance]:
        keys = Keys()
        for chapter in self.chapters:
            speaker = chapter.parent.name
            meta = {"speaker": speaker, "chapter": chapter.name}
            trans = chapter / f"{speaker}-{chapter.name}.trans.txt"
            found = sorted(chapter.glob("*.trans.txt"))
            trans = trans if trans.is_file() else (found[0] if found else None)
            listed: set[str] = set()
            for number, line in decoded_lines(trans) if trans is not None else ():
                source = f"{trans.relative_to(self.root)}:{number}"
                if line is None:
                    yield Utterance(keys(f"{trans.stem}_line{number}"), None, None, source, problem="text_decode_error")
                    continue
                if not line.strip():
                    continue
                utt, *rest = line.split(maxsplit=1)
                text = rest[0] if rest else ""
                listed.add(utt)
                audio = chapter / f"{utt}.flac"
                yield Utterance(keys(utt), audio, text, str(audio.relative_to(self.root)), dict(meta),
                                text_problem(text))
            for audio in sorted(chapter.glob("*.flac")):
                if audio.stem not in listed:  # audio without a transcript line: reported, not lost
                    yield Utterance(keys(audio.stem), audio, None, str(audio.relative_to(self.root)), dict(meta),
                                    problem="no_transcript",
                                    detail="no line in " + (trans.name if trans else "a missing .trans.txt"))
