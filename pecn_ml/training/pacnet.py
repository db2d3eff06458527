"""PAC-Net training: dynamic temporal cropping, layered AdamW, cosine schedule, exact resume.

Layout of `out_dir`:
  best/   the checkpoint with the lowest validation MAE (`load_pacnet` folder + metrics.json)
  last/   the latest finished epoch: model files + optimizer.safetensors/json, rng.safetensors,
          train_state.json (epoch, scheduler, history, configs); `resume=True` continues from it
  logs/   TensorBoard events (through accelerate's trackers; or an MLflow run, see `tracking.py`)

The MAE of the trivial predictor (always the mean training progress) on the same validation
crops is reported beside the model's MAE: a model is only useful below that floor.

K processes (`torchrun` / `accelerate launch`): `batch_size` is per rank, the run is defined by the
global batch (batch_size x K, also what the resume fingerprint holds). Each step takes the next
global batch of `epoch_permutation` (`GlobalBatchSampler` through `accelerator.prepare`) and
minimises its exact mean loss (a last partial batch by its real size); crops are keyed by
(seed, epoch, video), BatchNorm statistics cover the global batch (`GlobalBatchNorm2d`), so K = 2
at batch b trains as K = 1 at batch 2b does, up to float reduction order. Not matched: dropout
(> 0; the demo's `PacNetConfig.tiny` has none) draws from each rank's own torch RNG. Validation:
each rank predicts a contiguous shard of the validation set with the unwrapped model, the
predictions are gathered in order, so every rank computes the same val_mae and best epoch. Only
rank 0 writes best/, last/ (with every rank's RNG state) and the logs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, default_collate

from pecn_ml.models.pacnet import (PacNet, PacNetConfig, load_pacnet,
                                   read_pacnet_config, write_pacnet_files, WEIGHTS_NAME)
from pecn_ml.model_cards import BaseWeights, CardContext, base_license, build_card, write_card
from pecn_ml.models.weights import is_local, weights_identity
from pecn_ml.training.pacnet_data import (PacNetCropDataset, carve_selection_split, check_disjoint,
                                          check_entries, crop_indices, epoch_permutation)
from pecn_ml.training.tracking import (TrackingConfig, TrackingInfo, accelerator_kwargs,
                                       start_tracking, tag_run)
from pecn_ml.utils.files import (atomic_dir, folder_manifest, manifest_sha256, sha256_file, sha256_json,
                                 write_json_atomic)
from pecn_ml.utils.accel import (MIXED_PRECISION, GlobalBatchSampler, MixedPrecision, SlotDataset, collate_slots,
                                 gather_objects, launched_rank, launched_world_size, make_accelerator,
                                 reduce_sum, set_batchnorm_sync, slot_weights, sync_batchnorm)
from pecn_ml.utils.progress import LogFn, ProgressMeter

STATE_FORMAT = "pecn.pacnet.train.v1"
# Fields that do not change the result; a resumed run may differ in these. (The selection split's
# fraction and seed decide the entries, which the fingerprint holds themselves.)
_NON_RESULT_FIELDS = {"num_workers", "log_every_s", "selection_fraction", "selection_seed"}
# Pretrained folders: in a fingerprint by their weights' sha (see `_model_identity`).
_PRETRAINED_FIELDS = ("resnet_name", "clip_name")


@dataclass(frozen=True)
class PacNetTrainConfig:
    """Training hyper-parameters (defaults: the seed's PAC-Net table)."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 5e-5
    backbone_lr_mult: float = 0.2      # ResNet + CLIP text lr = lr * mult
    min_ratio: float = 0.1             # crop ratio r ~ U(min_ratio, max_ratio)
    max_ratio: float = 0.9
    mixed_precision: MixedPrecision = "no"  # "no" | "fp16" | "bf16" (accelerate)
    seed: int = 42                     # init, shuffling, training crops
    val_seed: int = 0                  # fixed validation crops
    num_workers: int = 0
    max_train_videos: Optional[int] = None
    max_val_videos: Optional[int] = None
    freeze_text_encoder: bool = False
    smooth_l1_beta: float = 1.0
    max_grad_norm: Optional[float] = None
    cpu: bool = False                  # force CPU even when CUDA is present
    log_every_s: float = 30.0
    # The selection split (`pacnet_splits`): this fraction of each task's training videos, drawn
    # with `selection_seed`, picks the best epoch; the evaluation videos only score the chosen model.
    # 0.05 of the seed's 7,962 training videos is ~400 (~100 per task), the size of its validation set.
    selection_fraction: float = 0.05
    selection_seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("PacNetTrainConfig: epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.backbone_lr_mult < 0 or self.weight_decay < 0:
            raise ValueError("PacNetTrainConfig: lr must be > 0, backbone_lr_mult and "
                             "weight_decay >= 0")
        if not 0.0 <= self.min_ratio <= self.max_ratio < 1.0:
            raise ValueError(f"PacNetTrainConfig: need 0 <= min_ratio <= max_ratio < 1, got "
                             f"{self.min_ratio}, {self.max_ratio}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"PacNetTrainConfig.mixed_precision must be one of "
                             f"{MIXED_PRECISION}, got {self.mixed_precision!r}")
        if not 0.0 < self.selection_fraction < 1.0:
            raise ValueError(f"PacNetTrainConfig.selection_fraction must be in (0, 1), got "
                             f"{self.selection_fraction}")
        for name in ("max_train_videos", "max_val_videos"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"PacNetTrainConfig.{name} must be >= 1 or None, got {v}")

    @classmethod
    def demo(cls, **overrides) -> "PacNetTrainConfig":
        """For the demo data (240 training videos, small stand-in backbones, 2 CPU cores): about
        a minute per head. The stand-ins are small, so they learn at a much higher rate; a near-L1
        loss (beta 0.02 on progress in [0, 1]) fits the MAE it is judged by (beta 1 is MSE there:
        val MAE / mean predictor 0.533 vs 0.513 in one measured pair of runs)."""
        base = dict(epochs=40, batch_size=8, lr=1e-3, backbone_lr_mult=0.2, smooth_l1_beta=0.02,
                    max_grad_norm=1.0, log_every_s=15.0)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PacNetTrainResult:
    """What a training run produced (MAE values in percentage points)."""

    val_mae: float                 # best validation MAE (the model in best_dir): on `val_entries`,
                                   # the selection split in the platform (it picked the epoch)
    baseline_mae: float            # mean-progress predictor on the same validation crops
    mean_train_progress: float     # the constant that predictor outputs, in [0, 1]
    best_epoch: int
    epochs_run: int                # epochs finished in total (== train_config.epochs)
    resumed_from_epoch: int        # epochs already finished before this call (0 = fresh)
    history: list = field(default_factory=list)  # [{epoch, train_loss, val_mae, lr, seconds}]
    best_dir: Path = Path()
    last_dir: Path = Path()
    weights_sha256: str = ""       # of best_dir/model.safetensors
    checkpoint_sha256: str = ""    # of best_dir's manifest: every file load_pacnet reads (the handle's sha)
    checkpoint_files: dict = field(default_factory=dict)   # that manifest: relative path -> sha256
    num_train: int = 0
    num_val: int = 0
    tracking: Optional[TrackingInfo] = None   # where the run logged (None: nothing left to train)
    num_processes: int = 1         # K data-parallel processes
    global_batch_size: int = 0     # batch_size x K
    # the test score: the best model once on `test_entries` (fixed crops, val_seed); nan/0 without
    test_mae: float = float("nan")
    test_baseline_mae: float = float("nan")   # the mean predictor on the same test crops
    num_test: int = 0


@dataclass(frozen=True)
class PacNetSplits:
    """Training, selection (picks the best epoch) and test (scores the chosen model) entries."""

    train: list
    selection: list
    test: list
    fraction: float
    seed: int

    def to_json(self) -> dict:
        """What `selection_split.json` records: the selection ids and how they were drawn."""
        tasks: dict[str, int] = {}
        for e in self.selection:
            tasks[str(e.get("task") or "")] = tasks.get(str(e.get("task") or ""), 0) + 1
        return {"format": "pecn.pacnet.selection_split.v1", "fraction": self.fraction, "seed": self.seed,
                "ids": [e["id"] for e in self.selection], "per_task": tasks,
                "num_train": len(self.train), "num_selection": len(self.selection), "num_test": len(self.test),
                "train_ids_sha256": sha256_json([e["id"] for e in self.train]),
                "test_ids_sha256": sha256_json([e["id"] for e in self.test]),
                "overlap_with_test": sorted({e["id"] for e in self.selection} & {e["id"] for e in self.test})}


def pacnet_splits(train_entries: Sequence[Mapping], eval_entries: Sequence[Mapping],
                  cfg: PacNetTrainConfig) -> PacNetSplits:
    """The selection split carved from the training videos (`cfg.selection_fraction` per task, seeded
    by `cfg.selection_seed`), disjoint from the evaluation videos, which become the test set. Raises
    `SplitOverlap` when any two of the three share a video."""
    test = check_entries(eval_entries, "eval_entries")
    train, selection = carve_selection_split(train_entries, cfg.selection_fraction, cfg.selection_seed,
                                             exclude=test)
    return PacNetSplits(train, selection, test, cfg.selection_fraction, cfg.selection_seed)


# ----------------------------------------------------------------------------------------------
# Optimisation pieces


def layered_param_groups(model: PacNet, lr: float, backbone_lr_mult: float,
                         weight_decay: float) -> list[dict]:
    """AdamW groups: backbone (ResNet + CLIP text) at lr * backbone_lr_mult, the rest at lr.

    Only trainable parameters are included (a frozen text encoder drops out).
    """
    model = getattr(model, "module", model)
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    backbone, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (backbone if id(p) in backbone_ids else rest).append(p)
    groups = [{"name": "backbone", "params": backbone, "lr": lr * backbone_lr_mult,
               "weight_decay": weight_decay},
              {"name": "head", "params": rest, "lr": lr, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


def progress_loss(model: PacNet, output: torch.Tensor, target: torch.Tensor,
                  beta: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Smooth L1 on progress (regression) or cross-entropy on round((C-1) * target) classes; the
    batch mean, or one loss per sample (B,) with `reduction="none"`."""
    cfg = getattr(model, "module", model).config
    target = target.float()
    if cfg.head == "regression":
        return F.smooth_l1_loss(output.float(), target, beta=beta, reduction=reduction)
    classes = torch.round(target * (cfg.num_classes - 1)).long().clamp_(0, cfg.num_classes - 1)
    return F.cross_entropy(output.float(), classes, reduction=reduction)


def _model_inputs(model: PacNet, batch: Mapping[str, Any]):
    frames = model.prepare_frames(batch["frames"])                    # (B, T, 3, S, S)
    input_ids, attention_mask = model.tokenize(batch["text"])         # (B, L), (B, L)
    return frames, input_ids, attention_mask


def training_step(model, batch: Mapping[str, Any], optimizer, accelerator,
                  beta: float = 1.0, max_grad_norm: Optional[float] = None, *,
                  weights: Optional[torch.Tensor] = None, num_samples: Optional[int] = None) -> float:
    """One optimizer step on a batch {"frames" uint8 (B,T,H,W,3), "text", "target" (B,)}.

    Alone: minimises the batch mean, returns it. In a K-process step over a global batch of
    `num_samples`, with loss `weights` (B,) (see `accel.slot_weights`): backpropagates
    sum(w * loss) * K / num_samples (DDP's gradient mean makes it the global batch's mean) and
    returns this rank's share sum(w * loss) / num_samples (the ranks' shares sum to the mean)."""
    raw = accelerator.unwrap_model(model)
    model.train()
    frames, ids, mask = _model_inputs(raw, batch)
    target = batch["target"].to(accelerator.device)
    optimizer.zero_grad(set_to_none=True)
    with accelerator.autocast():
        output = model(frames, ids, mask)
    if weights is None:
        loss = share = progress_loss(raw, output, target, beta)
    else:
        local = (progress_loss(raw, output, target, beta, reduction="none") * weights).sum()
        loss = local * accelerator.num_processes / num_samples
        share = local / num_samples
    accelerator.backward(loss)
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return float(share.detach())


@torch.no_grad()
def predict_loader(model, loader, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """(predicted progress, targets) over a loader, model in eval mode. The unwrapped model runs
    (no DDP forward: no collective op, so ranks may see different numbers of batches)."""
    raw = accelerator.unwrap_model(model)
    raw.eval()
    preds, targets = [np.zeros(0)], [np.zeros(0)]
    for batch in loader:
        frames, ids, mask = _model_inputs(raw, batch)
        with accelerator.autocast():
            out = raw(frames, ids, mask)
        preds.append(raw.progress_from_output(out).float().cpu().numpy())
        targets.append(batch["target"].float().numpy())
    return np.concatenate(preds).astype(np.float64), np.concatenate(targets).astype(np.float64)


def _val_shard(val_ds: PacNetCropDataset, rank: int, k: int, batch_size: int,
               num_workers: int, pin: bool) -> DataLoader:
    """This rank's contiguous share of the validation set, in order (K = 1: all of it)."""
    n = len(val_ds)
    shard = Subset(val_ds, range(rank * n // k, (rank + 1) * n // k))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin)


def _evaluate(model, val_loader, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, targets) over the whole validation set, the same arrays on every rank."""
    parts = gather_objects(accelerator, predict_loader(model, val_loader, accelerator))
    return np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts])


def mae_percent(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error in percentage points, for progress values in [0, 1]."""
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(target))) * 100.0)


def _make_accelerator(mixed_precision: str, cpu: bool, **tracker_kwargs):
    return make_accelerator(mixed_precision=mixed_precision, cpu=cpu, **tracker_kwargs)


# ----------------------------------------------------------------------------------------------
# Checkpoint state (safetensors + JSON, no pickles)


def _optimizer_to_files(state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def _all_rng_tensors(accelerator) -> dict[str, torch.Tensor]:
    """Every rank's RNG states (a collective): rank 0's as `_rng_tensors` names them, rank r's
    with the prefix "rank{r}." (dropout draws from them)."""
    out = {}
    for r, tensors in enumerate(gather_objects(accelerator, _rng_tensors())):
        out.update({(k if r == 0 else f"rank{r}.{k}"): v for k, v in tensors.items()})
    return out


def _rank_rng(tensors: dict[str, torch.Tensor], rank: int) -> Optional[dict[str, torch.Tensor]]:
    """The states rank `rank` saved, or None (a checkpoint of a run with fewer processes)."""
    if rank == 0:
        return tensors
    prefix = f"rank{rank}."
    mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return mine or None


def _rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The torch seed of rank > 0 (its own dropout stream) at a fresh start (epoch 0) or when a
    checkpoint holds no state for it."""
    return (int(seed) * 1_000_003 + rank * 7919 + epoch) % (2 ** 63)


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _write_dir_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    with atomic_dir(target) as tmp:
        write(tmp)
    return target


def _result_fields(cfg: PacNetTrainConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _NON_RESULT_FIELDS}


def _model_identity(config: PacNetConfig) -> dict:
    """The model config with the pretrained ResNet and CLIP counted by their weights' sha, not by
    their folders: a moved project still resumes its checkpoints."""
    return {**config.to_dict(), **{k: weights_identity(getattr(config, k)) for k in _PRETRAINED_FIELDS}}


def _fingerprint(model_config: PacNetConfig, cfg: PacNetTrainConfig, train: Sequence[Mapping],
                 val: Sequence[Mapping], num_processes: int = 1) -> dict:
    """What decides the run's result; a `last/` with another fingerprint is of another run. Its
    "batch_size" is the global batch (batch_size x K): K = 2 at 1 and K = 1 at 2 are one run."""
    return {"model_config": _model_identity(model_config),
            "train_config": {**_result_fields(cfg), "batch_size": cfg.batch_size * num_processes},
            "train_ids": sha256_json([e["id"] for e in train]),
            "val_ids": sha256_json([e["id"] for e in val])}


def _save_last(last_dir: Path, model, optimizer, scheduler, accelerator, state: dict) -> None:
    """Every rank calls this (its RNG state is gathered); rank 0 writes."""
    from safetensors.torch import save_file

    rng = _all_rng_tensors(accelerator)
    if not accelerator.is_main_process:
        return

    def write(tmp: Path) -> None:
        write_pacnet_files(accelerator.unwrap_model(model), tmp)
        tensors, meta = _optimizer_to_files(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json_atomic(tmp / "optimizer.json", meta)
        save_file(rng, str(tmp / "rng.safetensors"))
        scaler = getattr(accelerator, "scaler", None)
        full = dict(state, format=STATE_FORMAT, scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None)
        write_json_atomic(tmp / "train_state.json", full)

    _write_dir_atomic(last_dir, write)


def _find_last(out_dir: Path) -> Optional[Path]:
    """out_dir/last, or the old copy a crash mid-swap left behind."""
    for cand in (out_dir / "last", out_dir / ".last.old"):
        if (cand / "train_state.json").is_file():
            return cand
    return None


def _read_state(last: Path) -> dict:
    path = last / "train_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e}); delete {last} or pass resume=False") from e
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a {STATE_FORMAT} training state")
    return state


# ----------------------------------------------------------------------------------------------
# The loop


def _prepare_entries(entries: Sequence[Mapping], limit: Optional[int], what: str) -> list[dict]:
    entries = check_entries(entries, what)
    if not entries:
        raise ValueError(f"{what}: no entries")
    return entries[:limit] if limit is not None else entries


def _result(state: dict, out_dir: Path, resumed_from: int, n_train: int, n_val: int
            ) -> PacNetTrainResult:
    best = out_dir / "best"
    if not (best / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{best / WEIGHTS_NAME}: best checkpoint missing")
    files = folder_manifest(best)
    return PacNetTrainResult(
        val_mae=float(state["best_val_mae"]), baseline_mae=float(state["baseline_mae"]),
        mean_train_progress=float(state["mean_train_progress"]),
        best_epoch=int(state["best_epoch"]), epochs_run=int(state["epoch"]),
        resumed_from_epoch=resumed_from, history=list(state["history"]), best_dir=best,
        last_dir=out_dir / "last", weights_sha256=sha256_file(best / WEIGHTS_NAME),
        checkpoint_sha256=manifest_sha256(files), checkpoint_files=files,
        num_train=n_train, num_val=n_val, num_processes=int(state.get("num_processes", 1)),
        global_batch_size=int(state["train_config"]["batch_size"]))


def _test_scores(out_dir: Path, test_ds: Optional[PacNetCropDataset], mean_progress: float, accelerator,
                 cfg: PacNetTrainConfig, rank: int, k: int) -> dict:
    """The test score of best/: its MAE and the mean predictor's on the fixed test crops (every rank
    predicts a shard, as in validation); {} without test entries."""
    if test_ds is None:
        return {}
    model = load_pacnet(out_dir / "best", device=accelerator.device)
    loader = _val_shard(test_ds, rank, k, cfg.batch_size, cfg.num_workers, accelerator.device.type == "cuda")
    preds, targets = _evaluate(model, loader, accelerator)
    return {"test_mae": mae_percent(preds, targets),
            "test_baseline_mae": mae_percent(np.full_like(targets, mean_progress), targets),
            "num_test": len(test_ds)}


def _card_context(model_config: PacNetConfig, fingerprint: dict, card: Optional[CardContext]) -> CardContext:
    """The caller's context; without one, the bases as the trainer knows them (name + weights sha)."""
    if card is not None and card.bases:
        return card
    bases = []
    for role, key in (("resnet_base", "resnet_name"), ("clip_text_base", "clip_name")):
        name, identity = str(getattr(model_config, key)), str(fingerprint["model_config"][key])
        bases.append(BaseWeights(role=role, name=name, sha256=identity.removeprefix("sha256:")
                                 if identity.startswith("sha256:") else "",
                                 license=base_license(name if is_local(name) else None, name)))
    return replace(card or CardContext(), bases=tuple(bases))


def _write_best(tmp: Path, model, model_config: PacNetConfig, cfg: PacNetTrainConfig, metrics: dict,
                history: list, context: CardContext, n_train: int, n_val: int) -> None:
    """best/: the model files, metrics.json and the model card."""
    write_pacnet_files(model, tmp)
    write_json_atomic(tmp / "metrics.json", metrics)
    summary = {"best_epoch": metrics["epoch"], "selection_mae_pp": metrics["val_mae"],
               "mean_predictor_mae_pp": metrics["baseline_mae"],
               "train_loss_first_epoch": history[0]["train_loss"],
               "train_loss_best_epoch": history[-1]["train_loss"], "epochs_run": len(history),
               "num_train": n_train, "num_selection": n_val}
    write_card(tmp, build_card(
        title=f"PAC-Net ({model_config.head} head)", kind="pacnet", library_name="pytorch",
        description=("Progress estimation (ResNet frames + Transformer + CLIP text) trained with dynamic "
                     "temporal cropping; the epoch was chosen on the selection split (MAE in percentage "
                     "points), never on the evaluation videos. Load with `pecn_ml.models.pacnet.load_pacnet`."),
        context=context, training_config=cfg.to_dict(), seed=cfg.seed, loss_summary=summary,
        extra={"head": model_config.head, "model_config": model_config.to_dict()}))


def _train_epoch(model, loader, sampler: GlobalBatchSampler, optimizer, scheduler, accelerator,
                 cfg: PacNetTrainConfig, epoch: int, steps_per_epoch: int, meter: ProgressMeter
                 ) -> list[float]:
    """One epoch's optimizer steps; returns each step's mean loss over its global batch."""
    k, n = accelerator.num_processes, sampler.n
    sampler.set_epoch(epoch)
    loader.set_epoch(epoch)
    losses = []
    batches = iter(loader)
    for samples, _micros in sampler.step_sizes():   # one micro-batch per step
        slots, batch = next(batches)
        slots = slots.cpu()
        # a batch smaller than K is on every rank: its local BatchNorm statistics are the global ones
        set_batchnorm_sync(model, bool((slots < n).all()))
        share = training_step(model, batch, optimizer, accelerator, cfg.smooth_l1_beta,
                              cfg.max_grad_norm, weights=slot_weights(slots, n, k).to(accelerator.device),
                              num_samples=samples)
        loss = reduce_sum(accelerator, share)
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        losses.append(loss)
        accelerator.log({"train/loss": loss}, step=(epoch - 1) * steps_per_epoch + len(losses))
        meter.update(samples, extra=f"loss={loss:.4f}")
    assert next(batches, None) is None, "loader yielded more batches than its plan"
    return losses


def _start_over(out_dir: Path) -> None:
    for sub in ("last", ".last.old", "best", "logs"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)


def train_pacnet(model_config: PacNetConfig, train_config: PacNetTrainConfig, cache: Any,
                 train_entries: Sequence[Mapping], val_entries: Sequence[Mapping],
                 out_dir: str | os.PathLike, *, log: Optional[LogFn] = None,
                 resume: bool | str = True,
                 on_epoch_end: Optional[Callable[[int, dict], None]] = None,
                 tracking: Optional[TrackingConfig] = None, test_entries: Sequence[Mapping] = (),
                 card: Optional[CardContext] = None) -> PacNetTrainResult:
    """Train PAC-Net; returns the best validation MAE beside the mean-predictor floor.

    `val_entries` pick the best epoch (the platform passes the selection split of `pacnet_splits`);
    `test_entries` (the evaluation videos) score the best model once, at the end: `test_mae` beside
    the mean predictor's `test_baseline_mae`. The three must be disjoint (`SplitOverlap` otherwise).
    best/ gets a model card (README.md); `card` adds what the caller knows (run id, data versions,
    bases' revisions and licenses).

    `resume=True` continues from out_dir/last (the last finished epoch) and gives the same
    result as an uninterrupted run; `resume=False` starts over; `resume="auto"` resumes only a
    run with the same configs and data (else starts over), as a retried Dagster step needs. `on_epoch_end(epoch, row)` is
    called after each epoch's checkpoints are written (an exception there stops the run).
    `tracking`: where to log (default: TensorBoard in `{out_dir}/logs`); both configs are the run's
    hyper-parameters, the best checkpoint's sha256 is added as a tag.
    Under `torchrun`/`accelerate launch` every rank calls this with the same arguments and gets the
    same result; `log` is called on rank 0, `on_epoch_end` on every rank (after rank 0's writes).
    """
    from safetensors.torch import load_file

    cfg = train_config
    out_dir = Path(out_dir)
    rank, k = launched_rank(), launched_world_size()
    main_log = log if rank == 0 else None
    say = main_log or (lambda _msg: None)
    train = _prepare_entries(train_entries, cfg.max_train_videos, "train_entries")
    val = _prepare_entries(val_entries, cfg.max_val_videos, "val_entries")
    test = check_entries(test_entries, "test_entries")
    check_disjoint({"training (train_entries)": check_entries(train_entries, "train_entries"),
                    "selection (val_entries)": check_entries(val_entries, "val_entries"),
                    "test (test_entries)": test})
    train_ds = PacNetCropDataset(cache, train, model_config.num_frames, cfg.min_ratio,
                                 cfg.max_ratio, seed=cfg.seed, what="train_entries")
    val_ds = PacNetCropDataset(cache, val, model_config.num_frames, cfg.min_ratio,
                               cfg.max_ratio, seed=cfg.val_seed, fixed=True, what="val_entries")
    test_ds = PacNetCropDataset(cache, test, model_config.num_frames, cfg.min_ratio, cfg.max_ratio,
                                seed=cfg.val_seed, fixed=True, what="test_entries") if test else None
    # The trivial predictor: the mean of every training target the run sees (all epochs).
    mean_progress = float(np.mean([train_ds.targets(ep) for ep in range(1, cfg.epochs + 1)]))
    val_targets = val_ds.targets()
    baseline = mae_percent(np.full_like(val_targets, mean_progress), val_targets)
    fingerprint = _fingerprint(model_config, cfg, train, val, k)
    context = _card_context(model_config, fingerprint, card)

    last = _find_last(out_dir) if resume else None
    state = None
    if last is not None:
        state = _read_state(last)
        differs = [key for key, value in fingerprint.items() if state.get(key) != value]
        if differs and resume != "auto":
            raise ValueError(f"{last / 'train_state.json'}: {differs[0]} differs from this run's; "
                             f"pass resume=False (or 'auto') to start over in {out_dir}")
        if differs:
            say(f"pacnet: {out_dir} holds another run ({', '.join(differs)} differ); starting over")
            last = state = None
        elif state["epoch"] >= cfg.epochs:
            say(f"pacnet: {out_dir} already finished {state['epoch']} epochs; nothing to do")
            result = _result(state, out_dir, int(state["epoch"]), len(train), len(val))
            if test_ds is None:
                return result
            accelerator = _make_accelerator(cfg.mixed_precision, cfg.cpu)
            try:
                return replace(result, **_test_scores(out_dir, test_ds, result.mean_train_progress,
                                                      accelerator, cfg, rank, k))
            finally:
                accelerator.end_training()

    sampler = GlobalBatchSampler(lambda ep: epoch_permutation(cfg.seed, ep, len(train_ds)),
                                 len(train_ds), cfg.batch_size, k)
    steps_per_epoch = sampler.steps_per_epoch
    purge = int(state["epoch"]) * steps_per_epoch if state is not None else None
    accelerator = _make_accelerator(cfg.mixed_precision, cfg.cpu,
                                    **accelerator_kwargs(tracking, out_dir, "logs", purge_step=purge))
    assert (accelerator.process_index, accelerator.num_processes) == (rank, k), "RANK/WORLD_SIZE"
    accelerator.wait_for_everyone()          # every rank has read last/ ...
    if last is None and accelerator.is_main_process:
        _start_over(out_dir)                 # ... before rank 0 deletes it
    accelerator.wait_for_everyone()
    torch.manual_seed(cfg.seed)
    if state is not None:
        model = load_pacnet(last, device="cpu")
        # Equal but for the pretrained folders' paths (their weights' shas matched above).
        here = {key: getattr(model_config, key) for key in _PRETRAINED_FIELDS}
        if replace(read_pacnet_config(last), **here) != model_config:
            raise ValueError(f"{last}: model config differs from this run's")
        model.config = model_config  # later checkpoints name this run's folders
    else:
        model = PacNet(model_config)
    if k > 1:
        sync_batchnorm(model)        # statistics of the global batch, as one process would have
    if cfg.freeze_text_encoder:
        model.text_encoder.backbone.requires_grad_(False)
    groups = layered_param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs * steps_per_epoch)
    pin = accelerator.device.type == "cuda"
    # Its generator only seeds workers (the order is the sampler's): the global RNG stays untouched.
    train_loader = DataLoader(SlotDataset(train_ds), batch_sampler=sampler,
                              collate_fn=collate_slots(default_collate),
                              generator=torch.Generator().manual_seed(cfg.seed),
                              num_workers=cfg.num_workers, pin_memory=pin)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    val_loader = _val_shard(val_ds, rank, k, cfg.batch_size, cfg.num_workers, pin)

    start_epoch, history, best_mae, best_epoch = 0, [], math.inf, 0
    if state is not None:
        optimizer.load_state_dict(_optimizer_from_files(
            load_file(str(last / "optimizer.safetensors")),
            json.loads((last / "optimizer.json").read_text(encoding="utf-8"))))
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        best_mae, best_epoch = float(state["best_val_mae"]), int(state["best_epoch"])
        mine = _rank_rng(load_file(str(last / "rng.safetensors")), rank)
        if mine is not None:
            _restore_rng(mine)
        else:
            torch.manual_seed(_rank_seed(cfg.seed, rank, start_epoch))
        say(f"pacnet: resuming after epoch {start_epoch}/{cfg.epochs} from {last}")
    elif rank > 0:
        torch.manual_seed(_rank_seed(cfg.seed, rank, 0))  # its own dropout stream
    say(f"pacnet: {len(train_ds)} train / {len(val_ds)} selection / {len(test)} test videos, head={model_config.head}, "
        f"device={accelerator.device}, mixed_precision={cfg.mixed_precision}, "
        f"{k} process(es) x batch {cfg.batch_size}, "
        f"mean-progress baseline MAE {baseline:.2f} pp")
    tracker_config = {**cfg.to_dict(), **{f"model_{key}": v for key, v in fingerprint["model_config"].items()},
                      "num_train": len(train), "num_val": len(val), "baseline_mae": baseline,
                      "num_processes": k, "global_batch_size": cfg.batch_size * k}
    tracked = (start_tracking(accelerator, tracking, "pacnet", tracker_config)
               if accelerator.is_main_process else
               TrackingInfo(backend=(tracking or TrackingConfig()).backend,
                            tags=dict((tracking or TrackingConfig()).tags)))
    epochs_meter = ProgressMeter(f"pacnet epochs {start_epoch + 1}..{cfg.epochs}",
                                 total=cfg.epochs - start_epoch, log=main_log, every_s=0,
                                 unit="epochs")
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_ds.set_epoch(epoch)
            steps = ProgressMeter(f"pacnet epoch {epoch}", total=len(train_ds), log=main_log,
                                  every_s=cfg.log_every_s, unit="videos")
            losses = _train_epoch(model, train_loader, sampler, optimizer, scheduler, accelerator,
                                  cfg, epoch, steps_per_epoch, steps)
            preds, targets = _evaluate(model, val_loader, accelerator)
            val_mae = mae_percent(preds, targets)
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_mae": val_mae,
                   "lr": float(scheduler.get_last_lr()[-1]),
                   "seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            accelerator.log({"val/mae_pp": val_mae, "val/baseline_mae_pp": baseline,
                             "train/epoch_loss": row["train_loss"], "train/lr": row["lr"]},
                            step=epoch * steps_per_epoch)
            if val_mae < best_mae:
                best_mae, best_epoch = val_mae, epoch
                metrics = {"epoch": epoch, "val_mae": val_mae, "baseline_mae": baseline,
                           "mean_train_progress": mean_progress}
                if accelerator.is_main_process:
                    _write_dir_atomic(out_dir / "best", lambda tmp: _write_best(
                        tmp, accelerator.unwrap_model(model), model_config, cfg, metrics, history, context,
                        len(train), len(val)))
            state = dict(fingerprint, epoch=epoch, history=history, best_val_mae=best_mae,
                         best_epoch=best_epoch, baseline_mae=baseline,
                         mean_train_progress=mean_progress, num_processes=k)
            _save_last(out_dir / "last", model, optimizer, scheduler, accelerator, state)
            accelerator.wait_for_everyone()   # best/ and last/ are in place for every rank
            epochs_meter.update(1, extra=f"epoch {epoch}: train_loss={row['train_loss']:.4f} "
                                         f"val_mae={val_mae:.2f}pp baseline={baseline:.2f}pp "
                                         f"best={best_mae:.2f}pp@{best_epoch}")
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        result = _result(state, out_dir, start_epoch, len(train), len(val))
        scores = _test_scores(out_dir, test_ds, mean_progress, accelerator, cfg, rank, k)
        if scores:
            accelerator.log({"test/mae_pp": scores["test_mae"], "test/baseline_mae_pp": scores["test_baseline_mae"]},
                            step=cfg.epochs * steps_per_epoch)
            say(f"pacnet: test MAE {scores['test_mae']:.2f} pp (mean predictor {scores['test_baseline_mae']:.2f} pp) "
                f"on {scores['num_test']} evaluation videos, best epoch {result.best_epoch}")
            result = replace(result, **scores)
        tag_run(accelerator, {"checkpoint_sha256": result.checkpoint_sha256})
    finally:
        accelerator.end_training()
    return replace(result, tracking=tracked)


__all__ = ["PacNetTrainConfig", "PacNetTrainResult", "PacNetSplits", "pacnet_splits", "train_pacnet",
           "layered_param_groups", "training_step", "progress_loss", "predict_loader", "mae_percent", "crop_indices"]
