"""Preemption: a signal asks the run to stop at the end of the update in progress.

Clusters warn a job before they take its GPUs: SLURM sends SIGTERM at the end of a job or when
it preempts it (SIGUSR1, or any signal, with `--signal=USR1@120`), Kubernetes SIGTERM before
deleting a pod. `PreemptionSignal` remembers that one of the configured signals arrived; the
training loop agrees on it across ranks (in the all-reduce every update already does), writes a
checkpoint and exits with PREEMPTED_EXIT_CODE, so a requeued job resumes with
`--resume_from_checkpoint auto` and loses no update.

The signal may reach each rank (srun starting one task per GPU) or only `accelerate launch`:
with several processes (torchrun) the launcher passes SIGTERM on to its workers (SIGUSR1 too once
TORCHELASTIC_SIGNALS_TO_HANDLE lists it) and kills them 30 s later; with one process it passes
nothing on, so the process asks the kernel for SIGTERM when its launcher dies.

Ctrl-C (SIGINT) at a terminal is the same request from a person: the first one stops the run
after this update with a checkpoint, like SIGTERM; a second one stops it at once (KeyboardInterrupt).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, try again", neither success nor a config error
_PR_SET_PDEATHSIG = 1


class PreemptionSignal:
    """Installs handlers for `names` (e.g. ["SIGTERM", "SIGUSR1"]) and for Ctrl-C; `received` is
    the first that came."""

    def __init__(self, names: Sequence[str], interrupt: bool = True):
        self.received: str | None = None
        for name in names:
            signal.signal(getattr(signal, name), self._handle)
        if interrupt:
            signal.signal(signal.SIGINT, self._interrupt)
        if names and "ACCELERATE_MIXED_PRECISION" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ:
            signal_when_parent_dies(signal.SIGTERM)  # accelerate's one-process launcher forwards nothing

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            print(f"rank {os.environ.get('RANK', '0')}: {self.received}: finishing this update, then a checkpoint",
                  file=sys.stderr, flush=True)

    def _interrupt(self, signum: int, frame) -> None:
        if self.received is not None:  # the second Ctrl-C: now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = "SIGINT"
        if os.environ.get("RANK", "0") == "0":
            print("Ctrl-C: finishing this update, then a checkpoint (Ctrl-C again to stop at once, without one)",
                  file=sys.stderr, flush=True)


def parse_signals(spec: str) -> list[str]:
    """"SIGTERM,SIGUSR1" (or "TERM,USR1") → signal names; "" or "none" → none."""
    names = [n.strip().upper() for n in spec.split(",") if n.strip() and n.strip().lower() != "none"]
    names = [n if n.startswith("SIG") else f"SIG{n}" for n in names]
    unknown = [n for n in names if not isinstance(getattr(signal, n, None), signal.Signals)]
    if unknown:
        raise ValueError(f"unknown signal(s) {', '.join(unknown)}")
    return names


def signal_when_parent_dies(signum: int) -> None:
    """Linux's PR_SET_PDEATHSIG; elsewhere nothing (the signal must then reach this process)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):
        pass
