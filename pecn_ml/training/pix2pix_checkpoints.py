"""InstructPix2Pix training checkpoints: save, rotate, find and resume.

A checkpoint is ``{out_dir}/checkpoints/checkpoint-{step}/`` holding

- ``unet/``: the trained UNet in `save_pretrained` (safetensors) form,
- accelerate's `save_state` files: optimizer, grad scaler, the LR scheduler (registered for
  checkpointing: ``custom_checkpoint_0.pkl``) and one RNG file per process
  (``random_states_{rank}.pkl``; accelerate reads them back with ``torch.load(weights_only=True)``),
- ``training_state.json``: global step, epoch, seed, loss curve, process count and a fingerprint.

It is written into a hidden temp folder and renamed into place, so a crash never leaves a
half checkpoint that a later run would resume from. With K processes every rank > 0 first writes
its RNG file into ``.checkpoint-{step}.rank{r}/``; after a barrier rank 0 writes the rest into its
temp folder, moves those files in, renames it into place, and the others wait for that. Only
rank 0 rotates or deletes. `rotate_checkpoints` keeps at most `total_limit` (the diffusers
example's `checkpoints_total_limit`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from pecn_ml.utils.files import atomic_dir, write_json_atomic

LogFn = Callable[[str], None]
PREFIX = "checkpoint-"
STATE_FILE = "training_state.json"
UNET_SUBFOLDER = "unet"


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with a training_state.json) as (step, path), oldest first."""
    root = checkpoints_dir(out_dir)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            step = p.name[len(PREFIX):]
            if p.is_dir() and p.name.startswith(PREFIX) and step.isdigit() and (p / STATE_FILE).is_file():
                found.append((int(step), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def read_training_state(checkpoint: str | Path) -> dict[str, Any]:
    """The checkpoint's training_state.json, with a clear error when it is damaged."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the training state: {e}") from e
    for key in ("global_step", "base_seed", "loss_curve", "fingerprint"):
        if key not in state:
            raise ValueError(f"{path}: training state has no {key!r}")
    return state


def rotate_checkpoints(out_dir: str | Path, total_limit: Optional[int],
                       log: Optional[LogFn] = None) -> list[Path]:
    """Before a new save: delete the oldest so at most `total_limit - 1` remain. Returns the removed."""
    if total_limit is None:
        return []
    if total_limit < 1:
        raise ValueError(f"checkpoints_total_limit must be >= 1 or None, got {total_limit}")
    found = list_checkpoints(out_dir)
    remove = [p for _, p in found[: max(0, len(found) - total_limit + 1)]]
    for p in remove:
        shutil.rmtree(p)
    if remove and log:
        log(f"removed old checkpoints: {', '.join(p.name for p in remove)}")
    return remove


def clear_checkpoints(out_dir: str | Path) -> None:
    """Delete every checkpoint (a fresh run that must not resume)."""
    root = checkpoints_dir(out_dir)
    if root.exists():
        shutil.rmtree(root)


def register_unet_hooks(accelerator: Any) -> None:
    """Make `accelerator.save_state` write the UNet with `save_pretrained` and `load_state` read it
    back (the diffusers example's hooks), instead of accelerate's own model file."""
    from diffusers import UNet2DConditionModel

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for model in models:
            if accelerator.is_main_process:  # the other ranks' copies are the same weights
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, UNET_SUBFOLDER))
            weights.pop()

    def load_hook(models: list, input_dir: str) -> None:
        while models:
            model = models.pop()
            loaded = UNet2DConditionModel.from_pretrained(input_dir, subfolder=UNET_SUBFOLDER)
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _rank_part(root: Path, step: int, rank: int) -> Path:
    return root / f".{PREFIX}{step}.rank{rank}"


def save_checkpoint(accelerator: Any, out_dir: str | Path, step: int, state: dict[str, Any], *,
                    total_limit: Optional[int] = None, log: Optional[LogFn] = None) -> Path:
    """Rotate, then write ``checkpoint-{step}`` atomically (temp folder + rename). Called by every
    rank; returns when the checkpoint is in place for all of them."""
    root = checkpoints_dir(out_dir)
    final = root / f"{PREFIX}{step}"
    rank, k = accelerator.process_index, accelerator.num_processes
    if rank > 0:  # its RNG file (and a scaler copy, unused) into a folder of its own
        part = _rank_part(root, step, rank)
        shutil.rmtree(part, ignore_errors=True)
        accelerator.save_state(str(part))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        rotate_checkpoints(out_dir, total_limit, log)
        with atomic_dir(final) as tmp:
            accelerator.save_state(str(tmp))
            for r in range(1, k):
                name = f"random_states_{r}.pkl"
                os.replace(_rank_part(root, step, r) / name, tmp / name)
            write_json_atomic(tmp / STATE_FILE, {**state, "global_step": step})
        for r in range(1, k):
            shutil.rmtree(_rank_part(root, step, r), ignore_errors=True)
        if log:
            log(f"saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, checkpoint: str | Path) -> dict[str, Any]:
    """Restore UNet, optimizer, scheduler, scaler and RNG states; return the training state."""
    checkpoint = Path(checkpoint)
    state = read_training_state(checkpoint)
    if not (checkpoint / UNET_SUBFOLDER / "config.json").is_file():
        raise ValueError(f"{checkpoint}: checkpoint has no {UNET_SUBFOLDER}/ weights")
    accelerator.load_state(str(checkpoint))
    return state
