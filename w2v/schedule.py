"""Learning-rate schedules as LambdaLR multipliers of the peak learning rate."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("tri_stage", "linear", "cosine", "constant")


def tri_stage(step: int, total: int, warmup: int, hold_ratio: float, final_scale: float,
              init_scale: float = 0.01) -> float:
    """fairseq's tri-stage: linear warm-up from init_scale, hold at the peak, exponential decay to final_scale."""
    hold = int(hold_ratio * total)
    decay = max(total - warmup - hold, 1)
    if step < warmup:
        return init_scale + (1.0 - init_scale) * step / max(warmup, 1)
    if step < warmup + hold:
        return 1.0
    progress = min((step - warmup - hold) / decay, 1.0)
    return math.exp(math.log(final_scale) * progress)


def linear(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return step / max(warmup, 1)
    return max(0.0, (total - step) / max(total - warmup, 1))


def cosine(step: int, total: int, warmup: int, final_scale: float) -> float:
    if step < warmup:
        return step / max(warmup, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return final_scale + (1.0 - final_scale) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(step: int, warmup: int) -> float:
    """Linear warm-up, then the peak: independent of the run's length (a run can be extended)."""
    return min(1.0, step / warmup) if warmup > 0 else 1.0


def make_scheduler(optimizer: Optimizer, kind: str, total: int, warmup: int, hold_ratio: float = 0.4,
                   final_scale: float = 0.05) -> LambdaLR:
    if kind == "tri_stage":
        return LambdaLR(optimizer, lambda s: tri_stage(s, total, warmup, hold_ratio, final_scale))
    if kind == "linear":
        return LambdaLR(optimizer, lambda s: linear(s, total, warmup))
    if kind == "cosine":
        return LambdaLR(optimizer, lambda s: cosine(s, total, warmup, final_scale))
    if kind == "constant":
        return LambdaLR(optimizer, lambda s: constant(s, warmup))
    raise ValueError(f"unknown lr_scheduler_type {kind!r}; choose one of {SCHEDULES}")


def schedule_warnings(schedule: dict, saved: dict) -> list[str]:
    """What a user should know about the schedule before training: a warm-up as long as the run,
    and what changed since the checkpoint a run resumes from (and what applies now)."""
    lines = []
    if schedule["warmup_steps"] >= schedule["max_steps"]:
        lines.append(f"warmup_steps {schedule['warmup_steps']} >= max_steps {schedule['max_steps']}: the whole run is "
                     "warm-up (the learning rate never reaches its peak); lower warmup_steps or use warmup_ratio")
    for key, now in schedule.items():
        then = saved.get(key)
        if then is None or then == now:
            continue
        applies = ("the checkpoint's rate goes on (its optimizer and schedule state hold it)" if key == "learning_rate"
                   else "the new value shapes the rest of the schedule")
        lines.append(f"{key} changed since the checkpoint: {then} then, {now} now; {applies}")
    return lines
