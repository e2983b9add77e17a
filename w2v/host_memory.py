"""Host memory of a training rank: the allocator it runs with, and what it should need.

The allocator: tcmalloc when the system has it.

Every batch holds utterances of other lengths, so every update allocates tensors of other sizes
(tens of MB each on the CPU: the conv feature encoder's activations). glibc's malloc serves them
from its heaps and keeps what is freed there, fragmented: a CPU training process grows update
after update (the demo model at 40 padded seconds per batch: 3.9 GB after 100 updates, 4.3 GB
after 300, for a working set of about 1.5 GB). glibc's own remedies cost time: malloc_trim after
each update +26%, a fixed mmap threshold of 1 MB +64%. tcmalloc (gperftools) returns memory as it
goes and is faster: flat at 1.55 GB, 9% quicker (`benchmarks/bench_memory.py`; tables in
`docs/memory.md`). PyTorch's performance guide recommends it for CPU work too.

`use_tcmalloc()` runs first in train.py: when tcmalloc is installed (Debian/Ubuntu:
libtcmalloc-minimal4, which `make setup` installs) and not loaded yet, it executes the same command
again with tcmalloc in LD_PRELOAD. The process keeps its pid, arguments and environment, so a
launcher or a signal sees nothing; DataLoader workers, forked from it, use it too. W2V_ALLOCATOR=
system keeps glibc's.

What a rank needs (`estimate`, printed by `train.py --dry_run`; the formula and its measurements
are in docs/memory.md) depends on the batch cap, the loader's buffers, the worker count and the
model, never on the corpus size (the metadata is memory-mapped) or the number of updates.

For a big model across ranks (XLS-R 1B/2B, MMS-1B), `strategy_table` gives what each rank holds of
weights, gradients and AdamW state under DDP, FSDP full_shard and shard_grad_op, from the model's
parameter counts (`count_parameters`, which a model on the meta device serves as well) and the
formulas of `per_rank` (docs/memory.md, "Planning a big model").
"""

from __future__ import annotations

import ctypes.util
import math
import os
import re
import sys
from dataclasses import dataclass

LIBRARIES = ("tcmalloc_minimal", "tcmalloc")


def loaded() -> str:
    """The allocator this process runs with: "tcmalloc", "jemalloc", "glibc", or "unknown" where
    /proc does not say (not Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            mapped = maps.read()
    except OSError:
        return "unknown"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in mapped), "glibc")


def find_tcmalloc() -> str | None:
    """The tcmalloc library the dynamic loader would find (e.g. libtcmalloc_minimal.so.4), or None."""
    return next((found for name in LIBRARIES if (found := ctypes.util.find_library(name))), None)


def use_tcmalloc() -> None:
    """Execute this command again with tcmalloc preloaded, when it is installed and not loaded yet
    (and W2V_ALLOCATOR is not `system`); else return and go on with the allocator there is."""
    if os.environ.get("W2V_ALLOCATOR", "tcmalloc") == "system" or not sys.platform.startswith("linux"):
        return
    preloaded = os.environ.get("LD_PRELOAD", "")
    if os.environ.get("W2V_ALLOCATOR_EXECUTED") or "malloc" in preloaded:  # tried once; or the user chose one
        return
    library = find_tcmalloc()
    if library is None:
        return
    os.environ["LD_PRELOAD"] = ":".join(filter(None, (library, preloaded)))
    os.environ["W2V_ALLOCATOR_EXECUTED"] = "1"  # never a second time, whatever happens to LD_PRELOAD
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


# Measured on this project's CPU machines (benchmarks/bench_memory.py): a rank's resident memory
# once torch, transformers, accelerate, numba's kernels and w2v are imported, before any data.
IMPORTS_MB = 850.0
WORKER_OWN_MB = 100.0  # a forked DataLoader worker's own pages (the rest it shares with its rank)
SAMPLE_RATE = 16000


@dataclass
class Estimate:
    """Expected resident memory of one rank, in MB, by part; `workers`: each DataLoader worker's."""

    imports: float
    model: float
    activations: float
    loader: float
    workers: float
    num_workers: int

    @property
    def rank(self) -> float:
        return self.imports + self.model + self.activations + self.loader

    def describe(self) -> str:
        line = (f"host memory per rank (estimate): {self.rank / 1024:.1f} GB = imports {self.imports:.0f} MB + model "
                f"{self.model:.0f} MB + activations {self.activations:.0f} MB + loader {self.loader:.0f} MB")
        if self.num_workers:
            line += f"; each of {self.num_workers} DataLoader workers {self.workers:.0f} MB more"
        return line


def activation_mb(config, padded_seconds: float) -> float:
    """What a CPU training step keeps for its backward pass, from the model's shape: each conv
    layer's output, normalised and activated output and their gradient (4 copies), and per
    transformer layer about 10 hidden-sized and 2 intermediate-sized tensors per frame."""
    frames, conv = float(SAMPLE_RATE), 0.0
    for channels, stride in zip(config.conv_dim, config.conv_stride, strict=True):
        frames /= stride
        conv += channels * frames
    per_layer = 10 * config.hidden_size + 2 * config.intermediate_size
    per_second = 4 * conv + frames * (per_layer * config.num_hidden_layers + 4 * config.hidden_size)
    return padded_seconds * per_second * 4 / 2**20


def estimate(config, parameters: int, max_batch_seconds: float, num_buckets: int, lookahead: int,
             num_workers: int, on_gpu: bool, prefetch: int = 2) -> Estimate:
    """The expected host memory of a rank (see docs/memory.md): imports; on the CPU the model's
    weights, gradients and AdamW state (16 bytes a parameter) and the activations of the largest
    batch; the loader's buffer (decoded 16-bit audio waiting for its batch: num_buckets ×
    lookahead × max_batch_seconds at most, per decoding process) and the batches in flight."""
    buffer = num_buckets * lookahead * max_batch_seconds * SAMPLE_RATE * 2 / 2**20
    batch = max_batch_seconds * SAMPLE_RATE * 5 / 2**20  # float32 values and a bool mask
    decoding_here = num_workers == 0
    return Estimate(
        imports=IMPORTS_MB,
        model=0.0 if on_gpu else parameters * 16 / 2**20,
        activations=0.0 if on_gpu else activation_mb(config, max_batch_seconds),
        loader=(buffer + batch) if decoding_here else batch * prefetch * num_workers * (2 if on_gpu else 1),
        workers=WORKER_OWN_MB + buffer + batch * prefetch,
        num_workers=num_workers,
    )


def rss_mb() -> float:
    """This process's resident memory now, in MB (NaN where /proc does not say)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


# Planning a big model (XLS-R 1B/2B, MMS-1B) across ranks: the bytes per rank of its weights,
# gradients and optimizer state under DDP and FSDP2, from the parameter counts alone (a model built
# on the meta device is enough). Decimal units (1 GB = 10^9 bytes), as model sizes are quoted.

STRATEGIES = ("ddp", "full_shard", "shard_grad_op")
FP32 = 4  # bytes: master weights and gradients stay fp32 whatever the autocast precision
ADAMW = 8  # bytes: two fp32 states per trainable parameter
# The FSDP units: each transformer layer of model.wav2vec2.encoder.layers; a prefix such as
# "module." (a DDP wrapper) or "_orig_mod." (torch.compile) may come before it.
LAYER = re.compile(r"(?:^|\.)wav2vec2\.encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Unit:
    """One FSDP unit: its name, its parameter count and how many of them train."""

    name: str
    params: int
    trainable: int


@dataclass(frozen=True)
class ParameterCounts:
    """A model's parameters by FSDP unit: `units[0]` is the root (everything outside the encoder
    layers), then one unit per encoder layer, in order."""

    units: tuple[Unit, ...]

    @property
    def total(self) -> int:
        return sum(unit.params for unit in self.units)

    @property
    def trainable(self) -> int:
        return sum(unit.trainable for unit in self.units)

    @property
    def root(self) -> Unit:
        return self.units[0]

    @property
    def layers(self) -> tuple[Unit, ...]:
        return self.units[1:]


def count_parameters(model) -> ParameterCounts:
    """Parameters and trainable parameters (requires_grad) of a Wav2Vec2ForCTC, per FSDP unit.
    Reads only numel and requires_grad, so a model on the meta device plans as a real one would;
    named_parameters() yields a shared tensor once, as it is stored once."""
    root, trainable_root = 0, 0
    layers: dict[int, list[int]] = {}
    for name, param in model.named_parameters():
        numel, trains = param.numel(), int(param.requires_grad)
        if match := LAYER.search(name):
            counts = layers.setdefault(int(match.group(1)), [0, 0])
            counts[0] += numel
            counts[1] += numel * trains
        else:
            root += numel
            trainable_root += numel * trains
    return ParameterCounts((Unit("root", root, trainable_root),
                            *(Unit(f"layer {i}", *layers[i]) for i in sorted(layers))))


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds at the peak of a step, by part. `weights`, `gradients` and `optimizer`
    are the rank's own (sharded under FSDP); `gathered`: weights all-gathered from the other ranks
    and held at the peak; `buffers`: gradients in flight (DDP's buckets, or a unit's unsharded
    gradient before its reduce-scatter)."""

    strategy: str
    world_size: int
    weights: int
    gradients: int
    optimizer: int
    gathered: int
    buffers: int

    @property
    def transient(self) -> int:
        return self.gathered + self.buffers

    @property
    def peak_weights(self) -> int:
        """Weights resident at the peak: the rank's own and those gathered."""
        return self.weights + self.gathered

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.transient


def shard(nbytes: int, world_size: int) -> int:
    """A rank's share of sharded state (rounded up; the per-tensor padding FSDP adds is ignored)."""
    return -(-nbytes // world_size)


def per_rank(counts: ParameterCounts, world_size: int, strategy: str) -> RankMemory:
    """Bytes per rank of weights, gradients, AdamW state and transient buffers for one strategy:
    "ddp", "full_shard" or "shard_grad_op" (FSDP2 reshard_after_forward True / False); the
    formulas are in docs/memory.md. Frozen parameters hold only their weights."""
    strategy = strategy.lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if world_size < 1:
        raise ValueError(f"world size {world_size}: expected 1 or more")
    P, T, W = counts.total, counts.trainable, world_size
    if strategy == "ddp":  # everything replicated, plus the buckets: another copy of the gradients
        return RankMemory(strategy, W, FP32 * P, FP32 * T, ADAMW * T, gathered=0, buffers=FP32 * T)
    # Under FSDP the backward unshards one unit's gradient at a time before its reduce-scatter.
    unsharded_gradient = FP32 * max(unit.trainable for unit in counts.units)
    if strategy == "full_shard":
        # The root is not resharded after forward (FSDP2), so it stays gathered through the step;
        # of the layers, the one computing and the next one prefetched.
        largest_layer = max((unit.params for unit in counts.layers), default=0)
        gathered = FP32 * (counts.root.params + 2 * largest_layer)
    else:  # shard_grad_op: every unit gathered in the forward stays so until its backward
        gathered = FP32 * P
    return RankMemory(strategy, W, shard(FP32 * P, W), shard(FP32 * T, W), shard(ADAMW * T, W),
                      gathered=gathered, buffers=unsharded_gradient)


def size(nbytes: int) -> str:
    """Bytes to read in a table: GB with 2 decimals, MB below 1 GB."""
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def strategy_table(counts: ParameterCounts, world_size: int, precision: str, strategy: str = "ddp") -> list[str]:
    """Lines of a table, one row per strategy, of what a rank holds at world size `world_size`;
    `strategy` (the run's: "ddp" when it does not use FSDP) is marked with *. The precision is
    the autocast's: it changes the activations, not these fp32 weights, gradients and states."""
    strategy = strategy.lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    lines = [f"model memory per rank, world size {world_size}, mixed precision {precision} (the activations'; "
             f"weights, gradients, AdamW state fp32): {counts.total / 1e6:.1f} M parameters, "
             f"{counts.trainable / 1e6:.1f} M trainable",
             f"  {'strategy':<14} {'weights':>10} {'gradients':>10} {'optimizer':>10} {'transient':>10} {'total':>10}"]
    for name in STRATEGIES:
        m = per_rank(counts, world_size, name)
        lines.append(f"{'*' if name == strategy else ' '} {name:<14} {size(m.weights):>10} {size(m.gradients):>10} "
                     f"{size(m.optimizer):>10} {size(m.transient):>10} {size(m.total):>10}")
    lines.append("  (* this run; transient: DDP's gradient buckets, or FSDP's gathered weights and one unit's "
                 "unsharded gradient; shard_grad_op keeps all weights gathered from forward to backward)")
    return lines
