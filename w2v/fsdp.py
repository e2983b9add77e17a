"""Fully sharded data parallel training (PyTorch FSDP2, `fully_shard`) for models too big to copy on every rank.

Each transformer layer is one FSDP unit, the rest of the model (feature encoder, projection,
positional convolution, CTC head) the root unit. Every rank keeps 1/N of the weights, gradients
and AdamW state; a unit's weights are gathered for its forward and backward and freed after.

    full_shard       weights gathered per unit for the forward, freed, gathered again for the backward
    shard_grad_op    weights gathered in the forward and kept until the backward (more memory, fewer
                     all-gathers); gradients and optimizer state sharded as with full_shard

Why our own wrapping and not Accelerate's FSDP plugin: Accelerate ignores it on the CPU, and the
loop needs only four things from FSDP: shard the model, save/load the sharded state, gather the
full weights for `final/` and `best/`, and say what a rank holds. The loop is the same as DDP's:
gradients are reduce-scattered after every micro-batch (summed into the sharded gradients, so
accumulation needs no unsharded copy), averaged over ranks like DDP's all-reduce.

Checkpoints: OUTPUT_DIR/checkpoints/step-N/sharded/ is a torch.distributed.checkpoint folder (one
file per rank and the global metadata); it loads on any number of ranks (DCP re-shards), and
`load_full_weights` reads it without a process group (w2v-evaluate, w2v-transcribe).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

STRATEGIES = ("full_shard", "shard_grad_op")
SHARDED_STATE = "sharded"  # in checkpoints/step-N: the model and optimizer, one file per rank


def shard_model(model: nn.Module, layers: nn.ModuleList, strategy: str, device: torch.device) -> nn.Module:
    """`model` sharded in place over all ranks: each of `layers` a unit, the rest the root.
    Call before making the optimizer (it must hold the sharded parameters). One process gets a
    process group of its own, so that one rank trains and checkpoints exactly like N."""
    if strategy not in STRATEGIES:
        raise ValueError(f"fsdp {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if not dist.is_initialized():  # one process: Accelerate made no group
        dist.init_process_group("gloo" if device.type == "cpu" else "nccl", store=dist.HashStore(),
                                rank=0, world_size=1)
    model.to(device)
    # The logits are a view (a linear layer's output reshaped); FSDP warns in case they are changed in
    # place, which would skip its pre-backward hook. The loss reads them out of place only.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    reshard = strategy == "full_shard"
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard)
    # the root's weights stay gathered after its forward either way: its backward comes first
    fully_shard(model, reshard_after_forward=reshard)
    return model


def load_full_weights(folder: Path, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Fill `state` (a model's state_dict, names without `prefix`) from a sharded checkpoint, in
    one process without a process group."""
    wanted = {"model": {prefix + name: tensor for name, tensor in state.items()}}
    with warnings.catch_warnings():  # "torch.distributed is … uninitialized, assuming … a single process": yes
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(wanted, checkpoint_id=str(folder), no_dist=True)  # in place, into `state`'s tensors


def rank_state_mb(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """MB of weights and optimizer state this rank holds (its shards under FSDP, all under DDP)."""
    tensors = list(model.parameters())
    for per_param in optimizer.state.values():
        tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
    local = (t.to_local() if isinstance(t, DTensor) else t for t in tensors)
    return sum(t.numel() * t.element_size() for t in local) / 2**20


def full_norm(norm: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient norm computed over sharded gradients is a DTensor: the plain total."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


@dataclass
class ShardedTraining:
    """A sharded model (`w2v.model.CTCModel` under fully_shard) and its optimizer: what the run
    folder saves, loads and gathers for FSDP instead of Accelerate's save_state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def save(self, folder: Path) -> None:
        """Every rank writes its shards of the model and optimizer into `folder` (a collective)."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))

    def load(self, folder: Path) -> None:
        """The model and optimizer from `save`'s folder, saved on any number of ranks."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
        set_state_dict(self.model, self.optimizer, model_state_dict=model_state, optim_state_dict=optim_state)

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The Hugging Face model's full state dict on rank 0's CPU ({} elsewhere): a collective."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name.removeprefix(CTC_PREFIX): t for name, t in full.items()}


CTC_PREFIX = "model."  # CTCModel holds the Hugging Face model as `model`
