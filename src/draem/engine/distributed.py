"""Data-parallel training with torch.distributed (torchrun): ranks, reductions, synchronised BatchNorm."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from draem.errors import DraemError


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> Cluster:
        """Join the process group torchrun describes in the environment; NCCL on GPUs, gloo on CPUs.

        torch._dynamo is imported first: the optimisers import it on first use, and imported after the group
        exists it keeps references to it, so `close` would leave gloo's threads running into interpreter
        shutdown, where releasing a finished collective's tensors aborts the process ("terminate called
        without an active exception").
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            import torch._dynamo  # noqa: F401
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process, chosen by the local rank."""
        if device.type == "cuda" and self.world > 1:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean over all processes."""
        if self.world == 1:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when the flag is set in any process."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, model: nn.Module) -> None:
        """Give every process rank 0's parameters and buffers."""
        if self.world > 1:
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Replace each gradient by its mean over all processes (one flat all-reduce)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if self.world == 1 or not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class _GlobalMoments(torch.autograd.Function):
    """Per-channel mean and biased variance of a batch spread over all processes (two passes)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=x.dtype)
        sums = torch.cat([x.sum(dim=(0, 2, 3)), count])
        dist.all_reduce(sums)
        total = sums[-1]
        mean = sums[:-1] / total
        squares = ((x - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))
        dist.all_reduce(squares)
        var = squares / total
        ctx.save_for_backward(x, mean, total)
        return mean, var

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_mean: torch.Tensor,
                 grad_var: torch.Tensor) -> torch.Tensor:
        x, mean, total = ctx.saved_tensors
        grads = torch.cat([grad_mean, grad_var])
        dist.all_reduce(grads)
        grad_mean, grad_var = grads.chunk(2)
        centred = x - mean.view(1, -1, 1, 1)
        return (grad_mean.view(1, -1, 1, 1) + 2 * grad_var.view(1, -1, 1, 1) * centred) / total


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the whole global batch (CPU/gloo and GPU/NCCL)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        mean, var = _GlobalMoments.apply(x)
        with torch.no_grad():
            count = x.numel() / x.shape[1] * dist.get_world_size()
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            unbiased = var * count / max(count - 1, 1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        scale = (self.weight / torch.sqrt(var + self.eps)).view(1, -1, 1, 1)
        return ((x - mean.view(1, -1, 1, 1)) * scale + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def synchronise_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for SyncBatchNorm2d in place, keeping weights and state-dict keys."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum)
            synced = synced.to(child.weight.device, child.weight.dtype)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            synchronise_batchnorm(child)
    return model


def require_equal_shards(images: int, global_batch: int, world: int) -> None:
    """Every process needs a full batch each step."""
    if images < global_batch:
        raise DraemError(f"{images} training images are fewer than one global batch "
                         f"({world} processes x batch size {global_batch // world})")
