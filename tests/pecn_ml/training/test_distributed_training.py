"""K = 2 processes (torchrun, gloo on CPU) train what K = 1 trains at the same global batch.

Each test launches `dist_driver.py` under `python -m torch.distributed.run --standalone
--nproc_per_node 2` (per-rank batch 1) and runs the same driver in this process at batch 2 (K = 1).
Tolerance rtol 1e-5: the two runs add the same float32 per-sample losses and gradients in another
order (per-rank sums + all-reduce vs one batch sum; BatchNorm sums over ranks), a few ulps (~1e-7
relative, measured) per step that a handful of Adam steps do not grow past 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pecn_ml.models.tiny import build_tiny_models
from pecn_ml.utils.accel import GlobalBatchSampler

HERE = Path(__file__).parent
DRIVER = HERE / "dist_driver.py"
RTOL = 1e-5
sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")


def launch_two(args: list[str]) -> None:
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parents[2]), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(DRIVER), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def records(out: Path) -> list[dict]:
    return [json.loads((out / "records" / f"rank{r}.json").read_text()) for r in (0, 1)]


def run_one(args: list[str]) -> dict:
    import dist_driver

    return dist_driver.main(args)


# --- the plan, without processes ---------------------------------------------------------------------

@pytest.mark.parametrize("n,batch,k,acc", [(7, 1, 2, 2), (10, 2, 2, 1), (9, 1, 3, 2), (5, 4, 2, 1)])
def test_accelerate_shards_the_global_batches_as_planned(n, batch, k, acc):
    """accelerate's BatchSamplerShard deals the plan's batches out so that, per optimizer step,
    the ranks together hold exactly the step's samples of the permutation (replicated when a
    micro-batch is smaller than K), in as many micro-batches on every rank."""
    from accelerate.data_loader import BatchSamplerShard

    perm = list(np.random.default_rng(n).permutation(n))
    plan = GlobalBatchSampler(lambda _e: perm, n, batch, k, acc)
    shards = [list(BatchSamplerShard(plan, num_processes=k, process_index=r)) for r in range(k)]
    assert all(len(s) == len(plan) // k for s in shards)
    one = GlobalBatchSampler(lambda _e: perm, n, batch * k, 1, acc)   # K = 1, same global batch
    assert plan.step_sizes() == [(size, -(-size // (batch * k))) for size, _ in one.step_sizes()]
    pos, seen = 0, []
    for size, micros in plan.step_sizes():
        step = [slot for s in shards for b in s[pos:pos + micros] for slot in b]
        real = sorted(x for x in step if x < n)
        copies = [x - n for x in step if x >= n]
        assert sorted(real + sorted(set(copies))) == sorted(perm[len(seen):len(seen) + size])
        assert all(copies.count(c) == k for c in set(copies))     # on every rank, once each
        seen += perm[len(seen):len(seen) + size]
        pos += micros
    assert seen == perm


def test_sample_randomness_does_not_depend_on_the_batch():
    from pecn_ml.training.pix2pix import draw_sample_randomness

    cpu = torch.device("cpu")
    both = draw_sample_randomness((2, 4, 8, 8), 1000, base_seed=3, epoch=1, indices=[5, 2],
                                  dtype=torch.float32, device=cpu)
    alone = draw_sample_randomness((1, 4, 8, 8), 1000, base_seed=3, epoch=1, indices=[2],
                                   dtype=torch.float32, device=cpu)
    assert torch.equal(both.noise[1:], alone.noise) and torch.equal(both.timesteps[1:], alone.timesteps)
    other_epoch = draw_sample_randomness((1, 4, 8, 8), 1000, base_seed=3, epoch=2, indices=[2],
                                         dtype=torch.float32, device=cpu)
    assert not torch.equal(other_epoch.noise, alone.noise)


# --- two processes ------------------------------------------------------------------------------------

def test_pix2pix_two_processes_train_as_one(tiny, tmp_path):
    launch_two(["pix2pix", str(tmp_path / "k2"), "--batch", "1", "--pix2pix", str(tiny.pix2pix)])
    k2 = records(tmp_path / "k2")
    assert [r["rank"] for r in k2] == [0, 1] and not any(r["process_group_left"] for r in k2)
    assert k2[0] == dict(k2[1], rank=0)                     # every rank returned the same result
    assert (k2[0]["num_processes"], k2[0]["global_batch_size"], k2[0]["steps"]) == (2, 4, 4)
    run = tmp_path / "k2" / "run"
    # rank 0's outputs, once: grids of epochs 1 and 2, one event file, a complete checkpoint
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert len(list((run / "tensorboard").rglob("events.out.tfevents.*"))) == 2  # scalars + hparams
    assert (run / "loss_curve.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    files = {p.name for p in (run / "checkpoints" / "checkpoint-2").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "training_state.json", "unet",
            "optimizer.bin", "custom_checkpoint_0.pkl"} <= files
    assert not [p for p in run.rglob(".*")]                 # no temp folders left
    from pecn_ml.sampling import load_pipeline
    pipe = load_pipeline(k2[0]["model_dir"], torch.device("cpu"), torch.float32)
    image = pipe("pushing something from left to right", image=torch.zeros(1, 3, 32, 32),
                 num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()

    k1 = run_one(["pix2pix", str(tmp_path / "k1"), "--batch", "2", "--pix2pix", str(tiny.pix2pix)])
    assert (k1["num_processes"], k1["global_batch_size"]) == (1, 4)
    np.testing.assert_allclose(k2[0]["loss_curve"], k1["loss_curve"], rtol=RTOL, atol=0)

    # K = 1 at batch 2 is the same run: it resumes the K = 2 checkpoint (global batch 4)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "k2", resumed_dir)
    shutil.rmtree(resumed_dir / "records")
    resumed = run_one(["pix2pix", str(resumed_dir), "--batch", "2", "--pix2pix", str(tiny.pix2pix)])
    state = json.loads((run / "checkpoints" / "checkpoint-2" / "training_state.json").read_text())
    assert state["num_processes"] == 2 and resumed["loss_curve"][:2] == k2[0]["loss_curve"][:2]
    np.testing.assert_allclose(resumed["loss_curve"], k1["loss_curve"], rtol=RTOL, atol=0)


def test_pacnet_two_processes_train_as_one(tiny, tmp_path):
    models = ["--resnet", str(tiny.resnet), "--clip", str(tiny.clip_text)]
    launch_two(["pacnet", str(tmp_path / "k2"), "--batch", "1", *models])
    k2 = records(tmp_path / "k2")
    for r in k2:                                            # each rank's own wall time
        r["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]]
    assert k2[0] == dict(k2[1], rank=0)                     # same val_mae, best epoch, history
    assert (k2[0]["num_processes"], k2[0]["global_batch_size"]) == (2, 2)
    run = tmp_path / "k2" / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best", "last", "logs"]
    assert len(list((run / "logs").rglob("events.out.tfevents.*"))) == 2     # scalars + hparams
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (run / "last").iterdir()}
    assert json.loads((run / "last" / "training_state.json").read_text())["num_processes"] == 2

    k1 = run_one(["pacnet", str(tmp_path / "k1"), "--batch", "2", *models])
    assert (k1["num_processes"], k1["global_batch_size"], k1["best_epoch"]) == (1, 2, k2[0]["best_epoch"])
    for key in ("train_loss", "val_mae"):
        np.testing.assert_allclose([h[key] for h in k2[0]["history"]], [h[key] for h in k1["history"]],
                                   rtol=RTOL, atol=0, err_msg=key)
    assert k2[0]["baseline_mae"] == k1["baseline_mae"]
