"""Cross-process operations a method may need under torchrun (no-ops in a single process)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def process_count() -> int:
    """How many training processes torch.distributed runs (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor in place over all processes (state kept outside gradients, e.g. EMA codebooks); returned."""
    if process_count() > 1:
        dist.all_reduce(tensor)
    return tensor


def share_first_process(*tensors: torch.Tensor) -> None:
    """Give every process the first process's values of these tensors, in place."""
    if process_count() > 1:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)
