"""A tiny training run for the K-process tests: `python -m torch.distributed.run --standalone
--nproc_per_node K dist_driver.py {pix2pix|pacnet} OUT --batch B --pix2pix DIR --resnet DIR
--clip DIR` (or called in-process, K = 1). Every rank writes `OUT/records/rank{r}.json` with what
its trainer returned; the trainer writes everything else under OUT (rank 0)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # test_pix2pix_training's fake frame cache
sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/pecn_test_support

PIX2PIX_PAIRS = 7      # not a multiple of the global batch 4: a last step of 3, a micro-batch of 1
PACNET_VIDEOS = (7, 3)  # train / val; global batch 2: a last step of 1


def run_pix2pix(out: Path, batch: int, pix2pix: str) -> dict:
    from test_pix2pix_training import make_dataset, small_config

    from pecn_ml.training.pix2pix import train_pix2pix

    config = small_config(train_batch_size=batch, gradient_accumulation_steps=2, num_train_epochs=2,
                          checkpointing_steps=2, checkpoints_total_limit=2, validation_epochs=1,
                          num_validation_samples=1, latent_cache_dir=str(out / "latents"))
    res = train_pix2pix(pix2pix, make_dataset(PIX2PIX_PAIRS), config, out / "run",
                        val_dataset=make_dataset(2), log=print)
    return {"loss_curve": res.loss_curve, "steps": res.steps, "unet_sha256": res.unet_sha256,
            "model_dir": str(res.model_dir), "num_processes": res.num_processes,
            "global_batch_size": res.global_batch_size, "seed": res.seed,
            "validation_grid": str(res.validation_grid)}


def run_pacnet(out: Path, batch: int, resnet: str, clip: str) -> dict:
    from pecn_ml.models.pacnet import PacNetConfig
    from pecn_ml.training.pacnet import PacNetTrainConfig, train_pacnet
    from pecn_test_support.moving_squares import moving_square_dataset

    n_train, n_val = PACNET_VIDEOS
    cache, entries = moving_square_dataset(n_train + n_val, size=24, min_len=12, max_len=20, seed=3)
    model = PacNetConfig.tiny(resnet, clip, hidden_dim=32, num_frames=4, heads=4)
    config = PacNetTrainConfig(epochs=2, batch_size=batch, lr=1e-3, cpu=True, seed=7, val_seed=1,
                               max_grad_norm=1.0)
    res = train_pacnet(model, config, cache, entries[:n_train], entries[n_train:], out / "run",
                       log=print)
    return {"history": res.history, "val_mae": res.val_mae, "best_epoch": res.best_epoch,
            "baseline_mae": res.baseline_mae, "weights_sha256": res.weights_sha256,
            "num_processes": res.num_processes, "global_batch_size": res.global_batch_size}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("trainer", choices=("pix2pix", "pacnet"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--pix2pix", default="")
    parser.add_argument("--resnet", default="")
    parser.add_argument("--clip", default="")
    args = parser.parse_args(argv)
    import torch.distributed as dist

    record = (run_pix2pix(args.out, args.batch, args.pix2pix) if args.trainer == "pix2pix"
              else run_pacnet(args.out, args.batch, args.resnet, args.clip))
    from pecn_ml.utils.accel import process_rank

    record["rank"] = process_rank()[0]
    record["process_group_left"] = dist.is_initialized()   # end_training destroys it
    path = args.out / "records" / f"rank{record['rank']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
