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
"""

from __future__ import annotations

import ctypes.util
import math
import os
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
