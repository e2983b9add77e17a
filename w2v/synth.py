"""Speech synthesis with espeak-ng, for tests and the offline demo (no data sets to download).

espeak-ng writes 16-bit mono WAV at its native 22.05 kHz, so everything made here really
exercises the resampler on its way into shards.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ESPEAK_SR = 22050


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed: run `make setup` (apt-get install espeak-ng)")
    return path


def speak(text: str, out_wav: str | Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Synthesise `text` into a 22.05 kHz 16-bit mono WAV file."""
    out_wav = Path(out_wav)
    subprocess.run([espeak_binary(), "-v", voice, "-s", str(speed), "-w", str(out_wav), "--", text],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out_wav
