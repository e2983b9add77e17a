"""Transcribing audio that has no transcript: inputs, audio at 16 kHz, chunks, batches, decoding.

    transcriber = Transcriber.load("runs/x/final")            # greedy, or the LM exported there
    for result in transcriber.transcribe(find_inputs(["talks/"])):
        print(result.path, result.text)

- Inputs (`Inputs`, `find_inputs`): audio files, folders (searched recursively), shard folders, and
  every corpus layout w2v-make-shards reads (manifests, Common Voice, Kaldi, Lhotse, Hugging Face,
  SpeechBrain), read by the same reader: one input per row, its span honoured.
- Audio (`load_audio`): any rate and channel count, down-mixed and resampled to 16 kHz as at sharding
  (soxr HQ); what libsndfile cannot read (m4a/AAC, WebM, ...) is decoded by the `ffmpeg` command.
- Chunks: a recording longer than `chunk_seconds` is cut into overlapping chunks, each normalised on
  its own; the logits of each chunk lose their strides (the frames near a cut, where the model sees
  half a context) and are joined before decoding: the rule of transformers'
  `pipeline("automatic-speech-recognition", chunk_length_s=…)`, so a recording of any length needs
  the memory of one batch of chunks, and a file shorter than a chunk is decoded exactly as
  `pipeline()` decodes it.
- Batches: chunks of similar length, up to `batch_seconds` of padded audio; for a model without an
  attention mask (group-norm feature encoder), only chunks of the same length share a batch, since
  zero padding would change what such a model computes.
- Decoding: greedy, or beam search with an n-gram LM (`w2v.lm.decode.BeamDecoder`); word times
  come from the frames of each word (the greedy path, or the beam's word frames). The beam search
  of one group of recordings runs on threads while the next group is read and passed through the
  model.
- Device (`resolve_device`, `forward_context`): `auto` is CUDA when torch sees a GPU, else the
  CPU; the forward is fp32 (on CUDA without TF32) unless bf16 or fp16 autocast is asked for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from w2v.data.padding import attention_mask_from_lengths, normalize_and_pad
from w2v.lm.decode import BeamDecoder, find_lm_file, greedy_decode, labels_from_vocab, load_unigrams
from w2v.model import CTCModel
from w2v.scoring import log_probs
from w2v.shards.audio import TARGET_SR, AudioError, resample, to_mono
from w2v.shards.corpus import Corpus, CorpusError, open_corpus
from w2v.shards.readers.audio_folder import AUDIO_SUFFIXES, AudioFolder
from w2v.shards.sharding import DecodedRecording, decode_utterance
from w2v.shards.utterance import FileRange, Utterance
from w2v.text import WORD_DELIMITER, TextNormalizer, Vocabulary


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Result:
    path: str
    name: str = ""  # the input's unique name (Source.name): subtitle files are named by it
    duration: float = 0.0
    text: str = ""
    words: list[Word] = field(default_factory=list)
    error: str | None = None  # why it could not be transcribed (then nothing else is set)


# --- inputs ------------------------------------------------------------------------------------


class InputError(ValueError):
    """An input argument that names nothing usable (a usage error, not a bad audio file)."""


# Problems of a transcript, not of the audio: what is transcribed needs none.
TEXT_PROBLEMS = ("empty_text", "no_transcript")


@dataclass
class Source:
    """One input to transcribe: a recording, or a segment of one (`utt`, read as sharding reads
    it); `path`, what the outputs call it; `name`, unique among the inputs, for a file of its own
    (subtitles); `problem`, why there is nothing to read. `Source("a.wav")` is that file."""

    path: str
    utt: Utterance | None = None
    name: str = ""
    problem: str | None = None

    def __post_init__(self) -> None:
        if self.utt is None and self.problem is None:
            self.utt = Utterance(Path(self.path).name, Path(self.path), None, self.path)
        self.name = self.name or Path(self.path).name


class Inputs:
    """Every input the arguments name, in order: audio files, folders of them (recursively),
    manifests and corpus layouts (read by w2v.shards.corpus as w2v-make-shards reads them, spans
    included; transcripts are not needed), and shard folders. Listed lazily, so a parquet of
    recordings is streamed; an argument that names nothing usable is an InputError, raised here.
    Each input's `name` is unique: its path under the folder given (or its key in a manifest),
    `_2`, `_3` added to a name given again."""

    def __init__(self, arguments: Iterable[str], audio_column: str | None = None, split: str | None = None,
                 placeholders: dict[str, str] | None = None):
        self.groups = [self._open(Path(a), audio_column, split, placeholders) for a in arguments]

    @staticmethod
    def _open(path: Path, audio_column: str | None, split: str | None,
              placeholders: dict[str, str] | None) -> tuple[int, Callable[[], Iterator[Source]]]:
        if path.is_dir() and (path / "index.json").is_file():
            members = _shard_members(path)
            return len(members), lambda: iter(members)
        try:
            corpus = open_corpus(path, split=split, audio_column=audio_column, placeholders=placeholders,
                                 text_required=False)
        except CorpusError as exc:
            raise InputError(str(exc)) from None
        return corpus.count(), lambda: (_source(u, corpus) for u in corpus.utterances())

    def __len__(self) -> int:
        return sum(count for count, _ in self.groups)

    def __iter__(self) -> Iterator[Source]:
        given: dict[str, int] = {}
        for _, sources in self.groups:
            for source in sources():
                n = given[source.name] = given.get(source.name, 0) + 1
                if n > 1:
                    stem, dot, suffix = source.name.rpartition(".")
                    source.name = f"{stem}_{n}.{suffix}" if dot and "/" not in suffix else f"{source.name}_{n}"
                yield source


def find_inputs(arguments: Iterable[str], audio_column: str | None = None) -> list[Source]:
    """Every input the arguments name, as a list (see Inputs)."""
    return list(Inputs(arguments, audio_column))


def _source(utt: Utterance, corpus: Corpus) -> Source:
    """An utterance of a corpus as an input: its audio file (and span) or where it was listed."""
    path = str(utt.audio) if isinstance(utt.audio, Path) else utt.source
    if utt.span is not None and isinstance(utt.audio, Path):
        path = f"{path}@{utt.span}"
    name = utt.source if isinstance(corpus, AudioFolder) else utt.key
    if utt.audio is None or (utt.problem and utt.problem not in TEXT_PROBLEMS):
        return Source(path, None, name, problem=f"{utt.problem}: {utt.detail}" if utt.detail else utt.problem)
    return Source(path, utt, name)


def _shard_members(folder: Path) -> list[Source]:
    """The audio members of a shard folder's tar files (the index says which shards): listed with
    their place in the tar, read when their group is transcribed, so memory stays flat."""
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    sources = []
    for shard in index["shards"]:
        tar_path = str(folder / shard["name"])
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if member.isfile() and f".{ext}" in AUDIO_SUFFIXES:
                    audio = FileRange(tar_path, member.offset_data, member.size)
                    sources.append(Source(f"{tar_path}/{key}", Utterance(key, audio, None, key), key))
    return sources


# --- audio -------------------------------------------------------------------------------------


def load_audio(source: Source, recording: DecodedRecording | None = None) -> np.ndarray:
    """float32 mono samples at 16 kHz (its channel and span only, as at sharding; `recording`: the
    last one decoded, which the segments of one recording listed together reuse); AudioError with
    a short reason when it cannot be read."""
    data, rate, _ = decode_utterance(source.utt, recording)
    wave = to_mono(data)
    return resample(wave, rate) if rate != TARGET_SR else wave.astype(np.float32, copy=False)


# --- chunks ------------------------------------------------------------------------------------


@dataclass
class Chunk:
    item: int  # which recording
    start: int  # first sample
    wave: np.ndarray
    left: int  # samples at each end whose logits are dropped (the overlap with the neighbours)
    right: int


def chunks_of(item: int, wave: np.ndarray, chunk: int, stride: int) -> list[Chunk]:
    """Overlapping chunks of `chunk` samples, stepping by chunk - 2 * stride (pipeline's chunk_iter)."""
    if len(wave) <= chunk:
        return [Chunk(item, 0, wave, 0, 0)]
    step = chunk - 2 * stride
    out = []
    for start in range(0, len(wave), step):
        end = start + chunk
        last = end >= len(wave)
        piece = wave[start:end]
        left = 0 if start == 0 else stride
        if len(piece) > left:
            out.append(Chunk(item, start, piece, left, 0 if last else stride))
        if last:
            break
    return out


def batches_of(chunks: list[Chunk], batch_seconds: float, same_length: bool) -> Iterator[list[Chunk]]:
    """Chunks by length, each batch at most `batch_seconds` of padded audio (at least one chunk)."""
    cap = int(batch_seconds * TARGET_SR)
    batch: list[Chunk] = []
    for chunk in sorted(chunks, key=lambda c: (-len(c.wave), c.item, c.start)):
        longest = len(batch[0].wave) if batch else len(chunk.wave)
        if batch and ((len(batch) + 1) * longest > cap or (same_length and len(chunk.wave) != longest)):
            yield batch
            batch = []
        batch.append(chunk)
    if batch:
        yield batch


# --- device and precision --------------------------------------------------------------------

DEVICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """The device `--device NAME` means: `auto` (CUDA when torch sees a GPU, else the CPU), `cpu`,
    `cuda` or `cuda:N`. A ValueError naming the flag when it is unknown or not usable here: checked
    before anything slow, so a wrong device costs no model load and no pass over the data."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"--device {name}: not a device ({DEVICES})")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (torch.cuda.is_available() is "
                             f"False; torch {torch.__version__}): use --device cpu, or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                             f"(cuda:0 to cuda:{count - 1})")
    return device


def forward_context(device: torch.device, precision: str = "fp32") -> Callable[[], contextlib.AbstractContextManager]:
    """The forward's context for `--precision`: fp32 (the default) without autocast, and on CUDA
    without TF32, so that a GPU's figures are the CPU's up to rounding; bf16 or fp16 autocast on the
    device (the log-softmax stays fp32: w2v.scoring.log_probs). A ValueError when the device
    cannot run it."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return cudnn_without_tf32 if device.type == "cuda" else contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16 needs a CUDA device, not {device}: use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {device} does not support bf16: use fp16 or fp32")
    return functools.partial(torch.autocast, device_type=device.type, dtype=PRECISIONS[precision])


@contextlib.contextmanager
def cudnn_without_tf32() -> Iterator[None]:
    """cuDNN's convolutions in full fp32 for a forward: torch lets them use TF32 by default (a
    10-bit mantissa), which would take a GPU's log-probabilities further from the CPU's than
    rounding does. (Torch's legacy flag: it refuses to read a mix of its old and new TF32 settings.)"""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


# --- the transcriber ---------------------------------------------------------------------------


class Transcriber:
    """A CTC model folder, ready to turn recordings into text (greedy, or with an n-gram LM)."""

    def __init__(self, model, vocab: Vocabulary, decoder: BeamDecoder | None = None,
                 device: str | torch.device = "cpu", chunk_seconds: float = 30.0, stride_seconds: float | None = None,
                 batch_seconds: float = 160.0, precision: str = "fp32"):
        self.device = torch.device(device)
        self.forward_context = forward_context(self.device, precision)  # fp32, or autocast
        self.model = model.eval().to(self.device)
        self.recording = DecodedRecording()  # segments of one recording listed together: decoded once
        self.acoustic = CTCModel(self.model)  # the forward that scoring uses: logits → fp32 log-probs
        self.vocab, self.decoder = vocab, decoder
        self.ratio = int(np.prod(model.config.conv_stride))  # samples per output frame
        align = self.ratio  # chunk and stride lengths in whole frames, as pipeline() rounds them
        stride_seconds = chunk_seconds / 6 if stride_seconds is None else stride_seconds
        self.chunk = int(round(chunk_seconds * TARGET_SR / align)) * align
        self.stride = int(round(stride_seconds * TARGET_SR / align)) * align
        if self.chunk <= 2 * self.stride:
            raise ValueError(f"--chunk-seconds {chunk_seconds:g} must be more than twice --stride-seconds "
                             f"{stride_seconds:g}")
        self.batch_seconds = batch_seconds
        self.mask = bool(getattr(model.config, "feat_extract_norm", "group") == "layer")
        self.inverse = vocab.decoding_table()

    @classmethod
    def load(cls, model_dir: str | Path, lm: str | Path | None = None, alpha: float | None = None,
             beta: float | None = None, beam_width: int = 64, processes: int = 1,
             device: str | torch.device = "cpu", adapter_lang: str | None = None, **options) -> Transcriber:
        """The model, its vocabulary, and a beam decoder when `lm` is given or the folder holds an
        exported LM (`language_model/`, its alpha and beta in attrs.json); `lm="none"`: greedy.
        `adapter_lang`: an MMS model with that language's adapters, head and vocabulary."""
        import transformers

        from w2v.progress import on_terminal
        from w2v.run_folder import load_for_inference

        if not on_terminal():  # its "Loading weights" bar is not for log files
            transformers.utils.logging.disable_progress_bar()
        model, files = load_for_inference(model_dir, adapter_lang)  # a model folder, or a train.py checkpoint
        vocab = Vocabulary.load(files / "vocab.json", TextNormalizer.load(files), adapter_lang)
        model_dir = Path(model_dir)
        decoder = None
        if lm is None and (model_dir / "language_model").is_dir():
            lm = model_dir / "language_model"
            attrs = lm / "attrs.json"  # pyctcdecode's: the alpha and beta it was exported with
            weights = json.loads(attrs.read_text()) if attrs.is_file() else {}
            alpha = weights.get("alpha", 0.5) if alpha is None else alpha
            beta = weights.get("beta", 1.0) if beta is None else beta
        if lm is not None and str(lm) != "none":
            lm_file = find_lm_file(lm)
            labels = labels_from_vocab(vocab.tokens, size=model.config.vocab_size, pad=vocab.specials.pad,
                                       unk=vocab.specials.unk, delimiter=vocab.specials.delimiter)
            decoder = BeamDecoder(labels, lm_file, load_unigrams(lm_file), 0.5 if alpha is None else alpha,
                                  1.0 if beta is None else beta, beam_width, processes)
        return cls(model, vocab, decoder, device, **options)

    def transcribe(self, sources: Iterable[Source], batch_files: int = 64) -> Iterator[Result]:
        """Results in input order, `batch_files` recordings at a time (their chunks batched together)."""
        groups = _groups(sources, batch_files)
        if self.decoder is None:  # greedy decoding costs little next to the model: no threads
            for group in groups:
                results, log_probs = self._acoustic_group(group)
                yield from self._decoded(results, {k: self._decode(lp) for k, lp in log_probs.items()})
            return
        yield from self._transcribe_overlapped(groups)

    def _transcribe_overlapped(self, groups: Iterator[list[Source]]) -> Iterator[Result]:
        """With an LM: the beam search of a group runs on threads (as many as the decoder's
        `processes`) while the next group is read and passed through the model. The compiled search releases the GIL (numba nogil),
        and so does torch's forward, so the two overlap. Each recording is decoded on its own, as
        one after another would decode it; results are taken in input order, and one group is
        decoded while the next one is computed (two groups held at most)."""
        with ThreadPoolExecutor(self.decoder.processes, thread_name_prefix="w2v-beam") as threads:
            pending: tuple[list[Result], dict[int, Future]] | None = None
            for group in groups:
                results, log_probs = self._acoustic_group(group)
                decoding = {k: threads.submit(self._decode, lp) for k, lp in log_probs.items()}
                if pending is not None:
                    yield from self._decoded(pending[0], {k: f.result() for k, f in pending[1].items()})
                pending = (results, decoding)
            if pending is not None:
                yield from self._decoded(pending[0], {k: f.result() for k, f in pending[1].items()})

    def _acoustic_group(self, sources: list[Source]) -> tuple[list[Result], dict[int, np.ndarray]]:
        """A Result per source (its error, or its duration) and the log-probabilities of those read."""
        results, waves = [], {}
        for k, source in enumerate(sources):
            if source.problem:
                results.append(Result(source.path, source.name, error=source.problem))
                continue
            try:
                wave = load_audio(source, self.recording)
            except AudioError as exc:  # the reason, and the detail when it says more than the path
                detail = exc.detail.removeprefix(source.path).lstrip(": ")
                results.append(Result(source.path, source.name, error=f"{exc.reason}: {detail}" if detail else exc.reason))
                continue
            if len(wave) < self.ratio:
                results.append(Result(source.path, source.name, error=f"too_short: {len(wave)} samples"))
                continue
            results.append(Result(source.path, source.name, duration=len(wave) / TARGET_SR))
            waves[k] = wave
        return results, self.log_probs_of(waves)

    @staticmethod
    def _decoded(results: list[Result], decoded: dict[int, tuple[str, list[Word]]]) -> list[Result]:
        for k, (text, words) in decoded.items():
            results[k].text, results[k].words = text, words
        return results

    def log_probs_of(self, waves: dict) -> dict:
        """Log-probabilities [T, V] per recording, its chunks' strides dropped and joined."""
        chunks = [c for k, wave in waves.items() for c in chunks_of(k, wave, self.chunk, self.stride)]
        pieces: dict[int, list[tuple[int, np.ndarray]]] = {k: [] for k in waves}
        with torch.inference_mode():
            for batch in batches_of(chunks, self.batch_seconds, same_length=not self.mask):
                sizes = [len(c.wave) for c in batch]
                values = torch.from_numpy(normalize_and_pad([c.wave for c in batch])).to(self.device)
                mask = (torch.from_numpy(attention_mask_from_lengths(sizes, values.shape[1])).to(self.device)
                        if self.mask else None)
                out = log_probs(self.acoustic, values, mask, self.forward_context).cpu().numpy()
                for chunk, size, rows in zip(batch, sizes, out, strict=True):
                    frames = int(self.model._get_feat_extract_output_lengths(torch.tensor(size)))
                    # pipeline()'s rescale_stride: the strides in frames, rounded from samples
                    left = int(round(chunk.left / size * frames))
                    right = int(round(chunk.right / size * frames))
                    pieces[chunk.item].append((chunk.start, rows[left:frames - right]))
        return {k: np.concatenate([rows for _, rows in sorted(parts, key=lambda p: p[0])]) for k, parts in pieces.items()}

    def _decode(self, log_probs: np.ndarray) -> tuple[str, list[Word]]:
        seconds_per_frame = self.ratio / TARGET_SR
        if self.decoder is not None:
            text, frames = self.decoder.decode_words(log_probs)
            words = [Word(w, round(a * seconds_per_frame, 3), round(b * seconds_per_frame, 3)) for w, (a, b) in frames]
            return text, words
        text = greedy_decode(log_probs, self.inverse, self.vocab.pad_id)[0]
        return text, greedy_words(log_probs.argmax(-1), self.inverse, self.vocab.pad_id, seconds_per_frame)

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()


def _groups(sources: Iterable[Source], size: int) -> Iterator[list[Source]]:
    """The sources in lists of `size` (the last one shorter)."""
    group: list[Source] = []
    for source in sources:
        group.append(source)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def greedy_words(ids: np.ndarray, inverse: dict[int, str], blank: int, seconds_per_frame: float) -> list[Word]:
    """Words of the best path with their times: from the first frame of a word's first character to
    the last frame of its last one."""
    words, chars, start, end, previous = [], [], 0, 0, -1
    for frame, i in enumerate(ids.tolist()):
        if i == previous:
            if chars and i != blank:
                end = frame + 1
            continue
        previous = i
        token = inverse.get(i, "")
        if i == blank:
            continue
        if token in (WORD_DELIMITER, " "):
            if chars:
                words.append(Word("".join(chars), round(start * seconds_per_frame, 3), round(end * seconds_per_frame, 3)))
            chars = []
            continue
        if not chars:
            start = frame
        chars.append(token)
        end = frame + 1
    if chars:
        words.append(Word("".join(chars), round(start * seconds_per_frame, 3), round(end * seconds_per_frame, 3)))
    return words
