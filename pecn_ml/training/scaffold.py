"""The one training scaffold of both trainers (the shape of accelerate's `complete_nlp_example.py`):
the Accelerator (mixed precision, CPU, trackers), fingerprinted exact resume through accelerate's
`save_state`/`load_state` plus `training_state.json`, rank-0 writes, checkpoint rotation, pruning
of a finished run's training state. A trainer supplies its model (save/load hooks), step and
validation.

A checkpoint folder holds the model (written by the trainer's hook), accelerate's optimizer,
scheduler, scaler and per-rank RNG files, and `training_state.json` (the trainer's state with its
`fingerprint`: what decides the result; a checkpoint with another fingerprint is never resumed).
It is written into a temp folder and renamed into place; ranks > 0 first write their RNG files
into `.{name}.rank{r}/`, which rank 0 moves in.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch

from pecn_ml.model_cards import BaseWeights, CardContext, base_license
from pecn_ml.models.pix2pix import BASE_REF
from pecn_ml.models.weights import is_local
from pecn_ml.training.tracking import TrackingConfig, accelerator_kwargs
from pecn_ml.utils.accel import make_accelerator, process_rank
from pecn_ml.utils.files import atomic_dir, write_json_atomic
from pecn_ml.utils.progress import LogFn
from pecn_ml.utils.usage import bytes_on_disk

STATE_FILE = "training_state.json"
PREFIX = "checkpoint-"
# accelerate's save_state files: only a resume needs them
RESUME_FILE_PATTERNS = ("optimizer*.bin", "scheduler*.bin", "scaler*.pt", "random_states_*.pkl",
                        "custom_checkpoint_*.pkl")


def rank0_log(log: Optional[LogFn]) -> LogFn:
    """`log` on rank 0, a no-op elsewhere (readable before an Accelerator exists)."""
    return (log or (lambda _msg: None)) if process_rank()[0] == 0 else (lambda _msg: None)


def build_accelerator(mixed_precision: str, cpu: bool, log: LogFn, *,
                      tracking: Optional[TrackingConfig] = None, out_dir: Optional[Path] = None,
                      log_dir: str = "logs", purge_step: Optional[int] = None) -> Any:
    """An Accelerator with the run's trackers (none without `out_dir`); fp16 needs CUDA ("no" on a
    machine without it, or with `cpu`). Gradient accumulation is the loops' own (exact global-batch
    means), so accelerate's stays 1."""
    if mixed_precision == "fp16" and (cpu or not torch.cuda.is_available()):
        log("mixed_precision fp16 needs CUDA; training in fp32 on this machine")
        mixed_precision = "no"
    kwargs = accelerator_kwargs(tracking, out_dir, log_dir, purge_step) if out_dir is not None else {}
    return make_accelerator(mixed_precision=mixed_precision, cpu=cpu, **kwargs)


def card_context(card: Optional[CardContext], bases: Iterable[tuple[str, str, str]]) -> CardContext:
    """The caller's model-card context; without bases, `bases` (role, name, weights identity) as the
    trainer knows them: name, weights sha (from its identity), license."""
    card = card or CardContext()
    return card if card.bases else replace(card, bases=tuple(
        BaseWeights(role=role, name=name, sha256=identity.removeprefix("sha256:") if identity.startswith("sha256:")
                    else "", license=base_license(name if is_local(name) else None, name))
        for role, name, identity in bases))


@contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's CPU threads set to `threads` for the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def register_model_io(accelerator: Any, save: Callable[[Any, Path], None],
                      load: Callable[[Any, Path], None]) -> None:
    """`save_state` writes the model with `save(model, folder)` (rank 0) and `load_state` reads it
    with `load(model, folder)`, instead of accelerate's own model file."""
    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for model in models:
            if accelerator.is_main_process:  # the other ranks' copies are the same weights
                save(accelerator.unwrap_model(model), Path(output_dir))
            weights.pop()

    def load_hook(models: list, input_dir: str) -> None:
        while models:
            load(accelerator.unwrap_model(models.pop()), Path(input_dir))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# --- checkpoints ------------------------------------------------------------------------------

def read_state(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's training_state.json, with a clear error when it is damaged."""
    path = Path(folder) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the training state: {e}; delete {folder} "
                         f"or pass resume=False") from e
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise ValueError(f"{path}: training state has no 'fingerprint'")
    return state


def resumable(folder: Optional[Path], fingerprint: Mapping[str, Any], log: LogFn,
              strict: bool = False) -> Optional[dict[str, Any]]:
    """The state of checkpoint `folder` when it is of this same run (equal fingerprint), else None
    (logged; ValueError when `strict`). Reads only: the caller starts over when this is None."""
    if folder is None or not (folder / STATE_FILE).is_file():
        return None
    prior = read_state(folder)
    diff = sorted(k for k, v in fingerprint.items() if prior["fingerprint"].get(k) != v)
    if not diff:
        return prior
    if strict:
        raise ValueError(f"{folder / STATE_FILE}: {diff[0]} differs from this run's; "
                         f"pass resume=False (or 'auto') to start over in {folder.parent}")
    log(f"{folder}: checkpoint is of another run (differs in {diff}); starting over")
    return None


def start_over(accelerator: Any, paths: list[Path]) -> None:
    """Every rank has read the old state; rank 0 deletes `paths`; all wait for that."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Any, folder: Path, state: Mapping[str, Any],
                    log: Optional[LogFn] = None) -> Path:
    """Write checkpoint `folder` atomically (state incl. its fingerprint). Called by every rank;
    returns when it is in place for all of them."""
    rank, k = accelerator.process_index, accelerator.num_processes
    part = lambda r: folder.parent / f".{folder.name}.rank{r}"  # noqa: E731
    if rank > 0:  # its RNG file (and a scaler copy, unused) into a folder of its own
        shutil.rmtree(part(rank), ignore_errors=True)
        accelerator.save_state(str(part(rank)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(folder) as tmp:
            accelerator.save_state(str(tmp))
            for r in range(1, k):
                os.replace(part(r) / f"random_states_{r}.pkl", tmp / f"random_states_{r}.pkl")
            write_json_atomic(tmp / STATE_FILE, dict(state))
        for r in range(1, k):
            shutil.rmtree(part(r), ignore_errors=True)
        if log:
            log(f"saved checkpoint {folder}")
    accelerator.wait_for_everyone()
    return folder


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete rotating checkpoints `checkpoints/checkpoint-{step}` as (step, path), oldest first."""
    root, found = checkpoints_dir(out_dir), []
    if root.is_dir():
        for p in root.iterdir():
            step = p.name[len(PREFIX):]
            if p.name.startswith(PREFIX) and step.isdigit() and (p / STATE_FILE).is_file():
                found.append((int(step), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def save_rotating(accelerator: Any, out_dir: Path, step: int, state: Mapping[str, Any], *,
                  total_limit: Optional[int], log: Optional[LogFn] = None) -> Path:
    """Rotate (rank 0: delete the oldest so at most `total_limit - 1` remain), then save
    `checkpoints/checkpoint-{step}`."""
    if accelerator.is_main_process and total_limit is not None:
        found = list_checkpoints(out_dir)
        remove = [p for _, p in found[: max(0, len(found) - total_limit + 1)]]
        for p in remove:
            shutil.rmtree(p)
        if remove and log:
            log(f"removed old checkpoints: {', '.join(p.name for p in remove)}")
    return save_checkpoint(accelerator, checkpoints_dir(out_dir) / f"{PREFIX}{step}",
                           {**state, "global_step": step}, log)


# --- pruning ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pruned:
    """What `prune_training_state` removed, and the bytes that freed."""

    removed: tuple[Path, ...]
    freed_bytes: int
    kept_reason: str = ""  # why nothing (or not everything) was removed

    def metadata(self) -> dict:
        return {"pruned_paths": [str(p) for p in self.removed], "pruned_bytes": self.freed_bytes}


def _rotating_removable(out: Path) -> tuple[list[Path], str]:
    """InstructPix2Pix: checkpoints older than the final pipeline in `model/` (a newer one is of a
    later, still unfinished run and stays)."""
    if not checkpoints_dir(out).is_dir():
        return [], ""
    model = out / "model"
    index = model / BASE_REF if (model / BASE_REF).is_file() else model / "model_index.json"  # light or full
    finals = [index, *sorted((model / "unet").glob("*.safetensors"))]
    if not all(p.is_file() for p in finals[:2]):
        return [], f"{model}: no final pipeline; checkpoints kept (training not finished)"
    final_at = max(p.stat().st_mtime for p in finals)
    found = [p for _, p in list_checkpoints(out)]
    remove = [p for p in found if (p / STATE_FILE).stat().st_mtime <= final_at]
    newer = len(found) - len(remove)
    return remove, (f"{newer} checkpoint(s) newer than {model} kept" if newer else "")


def resume_files(folder: Path) -> list[Path]:
    """accelerate's state files in a checkpoint folder (what only a resume needs)."""
    return sorted(p for pattern in RESUME_FILE_PATTERNS for p in folder.glob(pattern))


def _last_removable(out: Path, keep_final: bool) -> tuple[list[Path], str]:
    """PAC-Net: the resume state in `last/` of a finished run (its state says `finished`)."""
    last = out / "last"
    if not (last / STATE_FILE).is_file():
        return [], ""
    if not (out / "best").is_dir():
        return [], f"{out / 'best'} missing; {last} kept"
    state = json.loads((last / STATE_FILE).read_text(encoding="utf-8"))
    if not state.get("finished"):
        return [], f"{last}: training not finished (epoch {state.get('epoch')}); kept"
    return (resume_files(last) if keep_final else [last]), ""


def prune_training_state(out_dir: str | os.PathLike, keep_final: bool = True,
                         log: Optional[LogFn] = None) -> Pruned:
    """Delete the optimizer-state checkpoints of a finished training in `out_dir` (after the
    trainer returned). Never the final model (`model/`, `best/`), grids, logs or latent caches.
    InstructPix2Pix: every checkpoint older than the final pipeline. PAC-Net's finished `last/`:
    `keep_final` removes only accelerate's state files (the run stays recognised as finished),
    else `last/` whole (a later run trains again). An unfinished run is left alone (`kept_reason`)."""
    out = Path(out_dir)
    p2p, why_p2p = _rotating_removable(out)
    pac, why_pac = _last_removable(out, keep_final)
    removed = p2p + pac   # disjoint: checkpoints/ and last/
    freed = sum(bytes_on_disk(p) for p in removed)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    why = "; ".join(w for w in (why_p2p, why_pac) if w)
    if log is not None and (removed or why):
        log(f"pruned {len(removed)} training-state path(s) under {out}, {freed / 2**20:.1f} MiB"
            + (f" ({why})" if why else ""))
    return Pruned(tuple(removed), freed, why)
