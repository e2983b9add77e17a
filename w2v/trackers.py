"""Experiment trackers (`--report_to`): a named one that cannot start is an error, not a silence.

Accelerate drops a tracker whose package is missing with a log line below the default level, so
a run meant to be followed in TensorBoard would train for days logging nothing. Here the names
are checked before any data is read, and the run says where each tracker writes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from w2v.config import ConfigError

# tracker name (Accelerate's) → the package it needs, also the name of its extra in pyproject.toml
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(TRACKERS[name]) is not None
    except ImportError:
        return False


def resolve_trackers(report_to: str | None) -> list[str]:
    """`none` (or empty), `all` (every supported tracker that is installed), or a comma list."""
    names = [n.strip().lower() for n in (report_to or "none").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return [n for n in TRACKERS if installed(n)]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"--report_to {name}: not a tracker this supports; choose none, all, or a comma "
                              f"list of {', '.join(TRACKERS)}")
        if not installed(name):
            raise ConfigError(f"--report_to {name}: the {TRACKERS[name]} package is not installed: "
                              f"pip install 'w2v[{name}]'")
    return names


def where(name: str, output_dir: Path) -> str:
    """Where a started tracker writes, said the way a user would look at it."""
    if name == "tensorboard":
        return f"tensorboard: {output_dir / 'w2v'} (tensorboard --logdir {output_dir})"
    if name == "wandb":
        if os.environ.get("WANDB_MODE") == "offline":
            return f"wandb: offline, under {output_dir / 'wandb'} (upload with: wandb sync {output_dir / 'wandb'}/offline-run-*)"
        return f"wandb: project w2v ({os.environ.get('WANDB_PROJECT', 'w2v')})"
    return name
