"""A folder of audio files (searched recursively) or one file: recordings with no transcripts, to transcribe.

Each file is one input, named by its path relative to the folder (so `talk.wav`, `talk.mp3` and
`sub/talk.flac` stay three inputs with three names).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from w2v.shards.utterance import Corpus, CorpusError, Keys, Utterance

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".wma", ".aiff",
                  ".aif", ".sph"}


class AudioFolder(Corpus):
    format = "audio"

    def __init__(self, root: Path):
        super().__init__(root)
        self.files = ([root] if root.is_file() else
                      sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        if not self.files:
            raise CorpusError(f"{root}: no audio files in this folder")

    def count(self) -> int:
        return len(self.files)

    def utterances(self) -> Iterator[Utterance]:
        keys = Keys()
        for path in self.files:
            name = path.name if path == self.root else str(path.relative_to(self.root))
            yield Utterance(keys(name), path, None, name)
