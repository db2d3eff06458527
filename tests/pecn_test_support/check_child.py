"""A Pipes training child without a model, for the tests of the launch itself (K processes, a killed
step): every rank makes an Accelerator, the ranks sum their numbers (all-reduce) and take one
data-parallel step on a 4-weight model; `hold_s` then keeps the launch (and its devices) that long.

    run_training(context, "check", CheckJob(LaunchOptions(out_dir)), module=MODULE, ...)
"""

import sys
import time
from dataclasses import dataclass

from pecn_assets import pipes_child
from pecn_assets.pipes_child import LaunchOptions, LogFn

MODULE = "pecn_test_support.check_child"


@dataclass(frozen=True)
class CheckJob:
    options: LaunchOptions
    hold_s: float = 0.0


def run_check(job: CheckJob, log: LogFn) -> dict:
    """All-reduce of the ranks' numbers and one DDP step; the weights must agree afterwards."""
    import torch

    from pecn_ml.utils.accel import make_accelerator

    accelerator = make_accelerator()
    n, rank = accelerator.num_processes, accelerator.process_index
    total = accelerator.reduce(torch.tensor([rank + 1.0], device=accelerator.device), "sum")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    x = torch.full((2, 4), float(rank + 1), device=accelerator.device)  # different data per rank
    accelerator.backward(model(x).pow(2).mean())
    optimizer.step()
    weights = accelerator.unwrap_model(model).weight.detach().reshape(1, -1)
    gathered = accelerator.gather(weights)                             # (n, 4)
    agree = bool(torch.allclose(gathered, gathered[:1].expand_as(gathered)))
    log(f"check: rank {rank}/{n} on {accelerator.device}, {accelerator.distributed_type}, "
        f"all-reduce sum {float(total):g}, weights agree: {agree}")
    meta = {"reduce_sum": float(total), "expected_sum": n * (n + 1) / 2,
            "weights_agree": agree, "distributed_type": str(accelerator.distributed_type),
            "backend": str(accelerator.state.backend), "device": str(accelerator.device)}
    accelerator.end_training()
    if job.hold_s > 0:
        log(f"check: rank {rank} holds the launch for {job.hold_s:g}s")
        time.sleep(job.hold_s)
    return meta


TRAINERS = {"check": (CheckJob, run_check)}

if __name__ == "__main__":
    sys.exit(pipes_child.main(trainers=TRAINERS))
