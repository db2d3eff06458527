"""Data-parallel training with accelerate (K processes, `torchrun` / `accelerate launch`), made so
that a K-process run computes what a one-process run with the same global batch computes.

- `make_accelerator`: a plain `Accelerator(**kwargs)` (one run per process; tests that build several
  in one process reset accelerate's state in a fixture, not here).
- `GlobalBatchSampler`: the epoch's sample order cut into optimizer steps of a *global* batch
  (per-rank batch x K x accumulation) and each step's micro-batches into K rank slices, yielded in
  the order accelerate's `BatchSamplerShard` deals them out (batch j to rank j mod K), so the
  loader still goes through `accelerator.prepare`. Slots are dataset indices; a micro-batch with
  fewer samples than ranks is given whole to every rank ("replicated" slots, weight 1/K), so no
  rank is ever empty. `slot_weights` turns slots into loss weights: a rank's loss is
  sum(w_i * l_i) * K / N (N: samples of the step), DDP's gradient mean then gives the exact mean
  over the global batch, whatever K, and a partial last step is weighted by its real size.
- `GlobalBatchNorm2d` / `sync_batchnorm`: BatchNorm statistics over the global batch (autograd-aware
  all-reduce; torch's `SyncBatchNorm` refuses CPU tensors, so it cannot run under gloo).
- `launched_rank`, `launched_world_size`, `reduce_sum`, `gather_objects`, `broadcast_object`: small collective helpers.
- `launch_command`: the command line that starts a module with K ranks (`accelerate launch` on GPUs,
  `torchrun` over gloo on the CPU).
"""

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
    """`Accelerator(**kwargs)`. accelerate keeps process-wide state, so one process builds one
    training run's Accelerator (the trainers run in their own `torchrun` processes)."""
    from accelerate import Accelerator

    return Accelerator(**kwargs)


def launched_rank() -> int:
    """This process's global rank as the launcher set it (`RANK`; 0 when not launched), readable
    before an Accelerator exists."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """The number of processes the launcher started (`WORLD_SIZE`; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for the rendezvous of one K > 1 launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(module_args: Sequence[str], num_processes: int = 1, *, cpu: bool = False,
                   python: str = sys.executable, port: Optional[int] = None) -> list[str]:
    """The command line that runs `python -m ...` (`module_args`, e.g. ["-m", "pkg.mod", "--x"])
    with `num_processes` ranks: the plain command for one; `accelerate launch --multi_gpu` (one
    rank per visible GPU, NCCL) for K > 1; `torchrun --standalone` for K > 1 on the CPU (run it
    with ACCELERATE_USE_CPU=true so accelerate talks gloo; `accelerate launch --cpu` starts a
    single process unless MPI is installed)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    module_args = list(module_args)
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

    `order(epoch) -> list[int]` is the epoch's permutation of range(n) (a pure function). Step s
    takes positions [s*G, (s+1)*G) of it (G = batch x K x accumulation; the last step of an epoch
    may be smaller: it trains on what is left, weighted by its real size); the step's micro-batch m
    takes the next batch*K of those, rank r the slice [r*N'/K, (r+1)*N'/K) of its N' samples.
    A micro-batch with N' < K samples goes to every rank as slots n + i (weight 1/K each).
    `set_epoch` chooses the epoch, `skip_steps` the optimizer steps already done (resume).
    """

    # BatchSamplerShard reads these: no fixed batch size (slices may differ by one); nothing to
    # drop or to cycle at the end, since every rank already gets whole, equal-count batches.
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
        out = []
        for s in range(self.skip_steps, self.steps_per_epoch):
            size = min(g, self.n - s * g)
            out.append((size, -(-size // cap)))
        return out

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
    """Items of `dataset` addressed by slot (index, or n + index when replicated): (slot, item).
    No `set_epoch` here: the trainer sets the wrapped dataset's epoch itself."""

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
    """Sum over ranks, differentiable: the gradient of each rank's input is the sum of the ranks'
    output gradients (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """`BatchNorm2d` whose training statistics are those of the global batch: per-channel sums and
    squared deviations are all-reduced over the ranks (two-pass, autograd-aware), so K ranks of
    batch b normalise as one process of batch K*b does (running stats: the same update). Eval
    mode, one process, or `sync = False` (a micro-batch replicated on every rank): plain BatchNorm.
    Same parameters and buffers as `BatchNorm2d`: state dicts are interchangeable."""

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
    """Turn every `BatchNorm2d` of `model` into a `GlobalBatchNorm2d` in place (the same module
    objects, parameters and buffers: optimizers and state dicts are unaffected); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
            count += 1
    return count


def set_batchnorm_sync(model: nn.Module, enabled: bool) -> None:
    """Switch the cross-rank statistics of every `GlobalBatchNorm2d` on or off."""
    for module in model.modules():
        if isinstance(module, GlobalBatchNorm2d):
            module.sync = enabled
