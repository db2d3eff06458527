"""Data-parallel training with accelerate: a K-process run computes what one process with the same
global batch computes (`GlobalBatchSampler`, `slot_weights`, `GlobalBatchNorm2d`), plus the launch
command, the process rank and small collectives."""

from __future__ import annotations

import os
import socket
import sys
import typing
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn


# accelerate's mixed precision modes the trainers offer (a Literal: the run config's schema lists them)
MixedPrecision = Literal["no", "fp16", "bf16"]
MIXED_PRECISION: tuple[str, ...] = typing.get_args(MixedPrecision)


def make_accelerator(**kwargs: Any):
    """`Accelerator(**kwargs)` (one training run per process: accelerate keeps process-wide state)."""
    from accelerate import Accelerator

    return Accelerator(**kwargs)


def process_rank() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as the launcher set them; (0, 0, 1) when not launched."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local_rank, int(os.environ.get("WORLD_SIZE", "1"))


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for the rendezvous of one K > 1 launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(module_args: Sequence[str], num_processes: int = 1, *, cpu: bool = False,
                   python: str = sys.executable, port: Optional[int] = None) -> list[str]:
    """`python -m ...` (`module_args`) with `num_processes` ranks: plain for one, `accelerate launch
    --multi_gpu` for K > 1, `torchrun --standalone` on the CPU (with ACCELERATE_USE_CPU=true)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if num_processes == 1:
        return [python, *module_args]
    if cpu:
        return [python, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(num_processes), *module_args]
    return [python, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(num_processes), "--num_machines", "1",
            "--main_process_port", str(port or free_port()),
            "--mixed_precision", "no",  # the trainer's Accelerator(mixed_precision=...) decides
            "--dynamo_backend", "no", *module_args]


# --- data order -----------------------------------------------------------------------------------

class GlobalBatchSampler:
    """Batches of dataset slots for `accelerator.prepare`, the same computation for any K.

    Step s takes positions [s*G, (s+1)*G) of `order(epoch)` (G = batch x K x accumulation; an
    epoch's last step may be smaller), each micro-batch of batch*K of those is cut into K rank
    slices, dealt out as accelerate's `BatchSamplerShard` does (batch j to rank j mod K). A
    micro-batch of N' < K samples goes to every rank as slots n + i (weight 1/K). `skip_steps`:
    the optimizer steps already done (resume).
    """

    # BatchSamplerShard reads these: no fixed batch size, nothing to drop or cycle
    batch_size = None
    drop_last = True

    def __init__(self, order: Callable[[int], Sequence[int]], n: int, batch_size_per_rank: int,
                 num_processes: int = 1, accumulation: int = 1):
        assert n >= 1 and batch_size_per_rank >= 1 and num_processes >= 1 and accumulation >= 1
        self.order, self.n = order, int(n)
        self.per_rank, self.k, self.accumulation = batch_size_per_rank, num_processes, accumulation
        self.epoch, self.skip_steps = 0, 0

    @property
    def global_batch_size(self) -> int:
        return self.per_rank * self.k * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.global_batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def step_sizes(self) -> list[tuple[int, int]]:
        """(samples N_s, micro-batches) of each step of the epoch (after `skip_steps`)."""
        g, cap = self.global_batch_size, self.per_rank * self.k
        sizes = [min(g, self.n - s * g) for s in range(self.skip_steps, self.steps_per_epoch)]
        return [(size, -(-size // cap)) for size in sizes]

    def rank_slices(self, chunk: Sequence[int]) -> list[list[int]]:
        """One global micro-batch (dataset indices) -> K rank batches of slots."""
        m, k = len(chunk), self.k
        if m < k:
            return [[self.n + i for i in chunk] for _ in range(k)]   # replicated on every rank
        return [list(chunk[r * m // k:(r + 1) * m // k]) for r in range(k)]

    def __iter__(self) -> Iterator[list[int]]:
        perm = list(self.order(self.epoch))
        assert sorted(perm) == list(range(self.n)), "order(epoch) must permute range(n)"
        g, cap = self.global_batch_size, self.per_rank * self.k
        for s in range(self.skip_steps, self.steps_per_epoch):
            step = perm[s * g:(s + 1) * g]
            for start in range(0, len(step), cap):
                yield from self.rank_slices(step[start:start + cap])

    def __len__(self) -> int:
        return self.k * sum(micro for _, micro in self.step_sizes())


class SlotDataset(torch.utils.data.Dataset):
    """Items of `dataset` addressed by slot (index, or n + index when replicated): (slot, item)."""

    def __init__(self, dataset: Any):
        self.dataset, self.n = dataset, len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, slot: int) -> tuple[int, Any]:
        return slot, self.dataset[slot % self.n]


def collate_slots(collate: Callable[[list], Any]) -> Callable[[list], tuple[torch.Tensor, Any]]:
    """A collate function for `SlotDataset` items: (slots (B,) long, collate(items))."""
    def collate_fn(pairs: list) -> tuple[torch.Tensor, Any]:
        return torch.tensor([s for s, _ in pairs], dtype=torch.long), collate([it for _, it in pairs])
    return collate_fn


def slot_indices(slots: torch.Tensor, n: int) -> torch.Tensor:
    """Dataset indices (B,) of slots (B,)."""
    return slots % n


def slot_weights(slots: torch.Tensor, n: int, num_processes: int) -> torch.Tensor:
    """Loss weights (B,) float: 1 for a sample of this rank, 1/K for a replicated one."""
    return torch.where(slots < n, 1.0, 1.0 / num_processes).to(torch.float32)


# --- collectives ----------------------------------------------------------------------------------

def reduce_sum(accelerator: Any, value: float) -> float:
    """The sum of a float over all ranks (every rank gets it)."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


def gather_objects(accelerator: Any, obj: Any) -> list:
    """[obj of rank 0, ..., obj of rank K-1] on every rank (picklable objects)."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def broadcast_object(accelerator: Any, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


# --- batch norm over the global batch ---------------------------------------------------------------

class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the input's gradient is the sum of the ranks' output gradients,
    so the backward pass is the same all-reduce."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    backward = forward


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """`BatchNorm2d` with the global batch's training statistics (all-reduced, two-pass, autograd-aware;
    torch's `SyncBatchNorm` refuses CPU tensors). Plain BatchNorm in eval mode, one process, or with
    `sync = False`; the same state dict as `BatchNorm2d`."""

    sync = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        if not (self.training and self.sync and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum(dim=(0, 2, 3)),
                           torch.full((1,), xf.numel() / c, device=x.device)])    # (C + 1,)
        total = all_reduce(local)
        count = total[c].detach()
        mean = total[:c] / count                                                # (C,)
        centred = xf - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / count       # (C,) biased
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var.detach() * (count / max(float(count) - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module) -> int:
    """Turn every `BatchNorm2d` of `model` into a `GlobalBatchNorm2d` in place; returns how many."""
    norms = [module for module in model.modules() if type(module) is nn.BatchNorm2d]
    for module in norms:
        module.__class__ = GlobalBatchNorm2d
    return len(norms)


def set_batchnorm_sync(model: nn.Module, enabled: bool) -> None:
    """Switch the cross-rank statistics of every `GlobalBatchNorm2d` on or off."""
    for module in model.modules():
        if isinstance(module, GlobalBatchNorm2d):
            module.sync = enabled
