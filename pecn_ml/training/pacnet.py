"""PAC-Net training on the training scaffold (`scaffold.py`): dynamic temporal cropping, layered
AdamW, cosine schedule, exact resume.

`out_dir`: best/ (lowest selection MAE: a `load_pacnet` folder, metrics.json, model card), last/
(the latest epoch: model files, accelerate's state, training_state.json; `resume` continues from
it), logs/ (trackers). The mean-progress predictor's MAE on the same crops is the floor to beat.
With K processes `batch_size` is per rank and the run is defined by the global batch (x K, in the
fingerprint); crops are keyed by (seed, epoch, video), BatchNorm statistics cover the global batch
and validation is sharded and gathered, so K = 2 at batch b trains as K = 1 at 2b (dropout aside).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, default_collate

from pecn_ml.model_cards import CardContext, build_card, write_card
from pecn_ml.models.pacnet import WEIGHTS_NAME, PacNet, PacNetConfig, load_pacnet, write_pacnet_files
from pecn_ml.models.weights import weights_identity
from pecn_ml.training import scaffold
from pecn_ml.training.pacnet_data import (PacNetCropDataset, carve_selection_split, check_disjoint,
                                          check_entries, epoch_permutation)
from pecn_ml.training.tracking import TrackingConfig, TrackingInfo, start_tracking, tag_run
from pecn_ml.utils.accel import (MIXED_PRECISION, GlobalBatchSampler, MixedPrecision, SlotDataset, collate_slots,
                                 gather_objects, process_rank, reduce_sum, set_batchnorm_sync, slot_weights,
                                 sync_batchnorm)
from pecn_ml.utils.files import atomic_dir, folder_manifest, manifest_sha256, sha256_file, sha256_json, write_json_atomic
from pecn_ml.utils.progress import LogFn, ProgressMeter

# Fields that do not change the result; a resumed run may differ in these. (The selection split's
# fraction and seed decide the entries, which the fingerprint holds themselves.)
_NON_RESULT_FIELDS = {"num_workers", "log_every_s", "selection_fraction", "selection_seed"}


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
    # The selection split (`pacnet_splits`): this fraction of each task's training videos (seeded)
    # picks the best epoch; the evaluation videos only score the chosen model.
    selection_fraction: float = 0.05
    selection_seed: int = 0

    def __post_init__(self):
        checks = [
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.lr > 0 and self.backbone_lr_mult >= 0 and self.weight_decay >= 0,
             "lr must be > 0, backbone_lr_mult and weight_decay >= 0"),
            (0.0 <= self.min_ratio <= self.max_ratio < 1.0,
             f"need 0 <= min_ratio <= max_ratio < 1, got {self.min_ratio}, {self.max_ratio}"),
            (self.mixed_precision in MIXED_PRECISION,
             f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"),
            (0.0 < self.selection_fraction < 1.0, f"selection_fraction must be in (0, 1), got {self.selection_fraction}"),
            *[(v is None or v >= 1, f"{name} must be >= 1 or None, got {v}")
              for name, v in (("max_train_videos", self.max_train_videos), ("max_val_videos", self.max_val_videos))],
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"PacNetTrainConfig: {message}")

    @classmethod
    def demo(cls, **overrides) -> "PacNetTrainConfig":
        """The demo's: small stand-in backbones learn at a higher rate; a near-L1 loss (beta 0.02)
        fits the MAE it is judged by."""
        return cls(**(dict(epochs=40, batch_size=8, lr=1e-3, backbone_lr_mult=0.2, smooth_l1_beta=0.02,
                           max_grad_norm=1.0, log_every_s=15.0) | overrides))


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
        tasks = dict(Counter(str(e.get("task") or "") for e in self.selection))
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


# --- optimisation pieces ------------------------------------------------------------------------

def layered_param_groups(model: PacNet, lr: float, backbone_lr_mult: float,
                         weight_decay: float) -> list[dict]:
    """AdamW groups of the trainable parameters: backbone (ResNet + CLIP text) at lr * backbone_lr_mult,
    the rest at lr."""
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
    """One optimizer step on a batch {"frames" uint8 (B,T,H,W,3), "text", "target" (B,)}; returns the
    batch mean. In a K-process step over `num_samples` with loss `weights` (B,) (`slot_weights`):
    backpropagates sum(w * loss) * K / num_samples and returns this rank's share of the mean."""
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
    """(predicted progress, targets) over a loader with the unwrapped model in eval mode (no
    collective op: ranks may see different numbers of batches)."""
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


def _evaluate(run: _Run, model, ds: PacNetCropDataset, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, targets) over all of `ds`, the same arrays on every rank; each rank predicts its
    contiguous share, in order (K = 1: all of it)."""
    n = len(ds)
    shard = Subset(ds, range(run.rank * n // run.k, (run.rank + 1) * n // run.k))
    loader = DataLoader(shard, batch_size=run.cfg.batch_size, shuffle=False, num_workers=run.cfg.num_workers,
                        pin_memory=accelerator.device.type == "cuda")
    parts = gather_objects(accelerator, predict_loader(model, loader, accelerator))
    return np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts])


def mae_percent(pred: np.ndarray | float, target: np.ndarray) -> float:
    """Mean absolute error in percentage points, for progress values in [0, 1] (`pred` may be a constant)."""
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(target))) * 100.0)


# --- what a run is, and what it leaves --------------------------------------------------------

def _fingerprint(model_config: PacNetConfig, cfg: PacNetTrainConfig, train: Sequence[Mapping],
                 val: Sequence[Mapping], num_processes: int = 1) -> dict:
    """What decides the run's result; a `last/` with another fingerprint is of another run. Its
    "batch_size" is the global batch (batch_size x K): K = 2 at 1 and K = 1 at 2 are one run."""
    result_fields = {k: v for k, v in asdict(cfg).items() if k not in _NON_RESULT_FIELDS}
    # the pretrained ResNet and CLIP by their weights' sha, not their folders: a moved project still resumes
    pretrained = {k: weights_identity(getattr(model_config, k)) for k in ("resnet_name", "clip_name")}
    return {"model_config": {**model_config.to_dict(), **pretrained},
            "train_config": {**result_fields, "batch_size": cfg.batch_size * num_processes},
            "train_ids": sha256_json([e["id"] for e in train]),
            "val_ids": sha256_json([e["id"] for e in val])}


@dataclass
class _Run:
    """One training run's data, model and state, shared by its setup, epoch and save functions."""

    model_config: PacNetConfig
    cfg: PacNetTrainConfig
    out_dir: Path
    log: LogFn
    train_ds: PacNetCropDataset
    val_ds: PacNetCropDataset
    test_ds: Optional[PacNetCropDataset]
    mean_progress: float
    baseline: float
    fingerprint: dict
    context: CardContext
    rank: int = 0
    k: int = 1
    accelerator: Any = None
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    sampler: Optional[GlobalBatchSampler] = None
    train_loader: Any = None
    start_epoch: int = 0
    history: list = field(default_factory=list)
    best_mae: float = math.inf
    best_epoch: int = 0
    tracked: Optional[TrackingInfo] = None

    def state(self, epoch: int) -> dict:
        """What last/training_state.json records after `epoch`."""
        return {"fingerprint": self.fingerprint, "epoch": epoch, "history": self.history,
                "best_val_mae": self.best_mae, "best_epoch": self.best_epoch, "baseline_mae": self.baseline,
                "mean_train_progress": self.mean_progress, "num_processes": self.k,
                "finished": epoch >= self.cfg.epochs}


def _data(model_config: PacNetConfig, cfg: PacNetTrainConfig, cache: Any, train_entries: Sequence[Mapping],
          val_entries: Sequence[Mapping], test_entries: Sequence[Mapping], out_dir: Path, log: LogFn,
          card: Optional[CardContext]) -> _Run:
    """Check the splits; the datasets, the mean-predictor floor and the run's fingerprint."""
    full = []   # all of the training and selection entries (max_*_videos cut what the run uses)
    for entries, what in ((train_entries, "train_entries"), (val_entries, "val_entries")):
        full.append(check_entries(entries, what))
        if not full[-1]:
            raise ValueError(f"{what}: no entries")
    test = check_entries(test_entries, "test_entries")
    check_disjoint({"training (train_entries)": full[0], "selection (val_entries)": full[1],
                    "test (test_entries)": test})
    train, val = full[0][:cfg.max_train_videos], full[1][:cfg.max_val_videos]
    n, lo, hi = model_config.num_frames, cfg.min_ratio, cfg.max_ratio
    train_ds = PacNetCropDataset(cache, train, n, lo, hi, seed=cfg.seed, what="train_entries")
    val_ds = PacNetCropDataset(cache, val, n, lo, hi, seed=cfg.val_seed, fixed=True, what="val_entries")
    test_ds = PacNetCropDataset(cache, test, n, lo, hi, seed=cfg.val_seed, fixed=True,
                                what="test_entries") if test else None
    # The trivial predictor: the mean of every training target the run sees (all epochs).
    mean_progress = float(np.mean([train_ds.targets(ep) for ep in range(1, cfg.epochs + 1)]))
    baseline = mae_percent(mean_progress, val_ds.targets())
    rank, _, k = process_rank()
    fingerprint = _fingerprint(model_config, cfg, train, val, k)
    context = scaffold.card_context(card, [
        (role, str(getattr(model_config, key)), str(fingerprint["model_config"][key]))
        for role, key in (("resnet_base", "resnet_name"), ("clip_text_base", "clip_name"))])
    return _Run(model_config, cfg, out_dir, log, train_ds, val_ds, test_ds, mean_progress, baseline,
                fingerprint, context, rank=rank, k=k)


def _load_model(model: PacNet, folder: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))


def _setup(run: _Run, state: Optional[dict], tracking: Optional[TrackingConfig]) -> None:
    """Accelerator, model, optimizer, scheduler and loaders; the resumed state when given."""
    cfg, k = run.cfg, run.k
    run.sampler = GlobalBatchSampler(lambda ep: epoch_permutation(cfg.seed, ep, len(run.train_ds)),
                                     len(run.train_ds), cfg.batch_size, k)
    run.start_epoch = int(state["epoch"]) if state is not None else 0
    acc = run.accelerator = scaffold.build_accelerator(
        cfg.mixed_precision, cfg.cpu, run.log, tracking=tracking, out_dir=run.out_dir, log_dir="logs",
        purge_step=run.start_epoch * run.sampler.steps_per_epoch if state is not None else None)
    assert (acc.process_index, acc.num_processes) == (run.rank, k), "RANK/WORLD_SIZE"
    if state is None:
        scaffold.start_over(acc, [run.out_dir / sub for sub in ("last", "best", "logs")])
    torch.manual_seed(cfg.seed)
    model = PacNet(run.model_config)
    if k > 1:
        sync_batchnorm(model)        # statistics of the global batch, as one process would have
    if cfg.freeze_text_encoder:
        model.text_encoder.backbone.requires_grad_(False)
    optimizer = torch.optim.AdamW(layered_param_groups(model, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay),
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * run.sampler.steps_per_epoch)
    pin = acc.device.type == "cuda"
    # Its generator only seeds workers (the order is the sampler's): the global RNG stays untouched.
    loader = DataLoader(SlotDataset(run.train_ds), batch_sampler=run.sampler, collate_fn=collate_slots(default_collate),
                        generator=torch.Generator().manual_seed(cfg.seed), num_workers=cfg.num_workers, pin_memory=pin)
    scaffold.register_model_io(acc, write_pacnet_files, _load_model)
    run.model, run.optimizer, run.train_loader = acc.prepare(model, optimizer, loader)
    acc.register_for_checkpointing(run.scheduler)
    if run.rank > 0:  # its own dropout stream, where no saved RNG state is restored
        torch.manual_seed((int(cfg.seed) * 1_000_003 + run.rank * 7919 + run.start_epoch) % (2 ** 63))
    if state is not None:
        acc.load_state(str(run.out_dir / "last"))   # this rank's RNG too, when it was saved
        run.history = list(state["history"])
        run.best_mae, run.best_epoch = float(state["best_val_mae"]), int(state["best_epoch"])
        run.log(f"pacnet: resuming after epoch {run.start_epoch}/{cfg.epochs} from {run.out_dir / 'last'}")
    run.tracked = start_tracking(acc, tracking, "pacnet", {
        **asdict(cfg), **{f"model_{key}": v for key, v in run.fingerprint["model_config"].items()},
        "num_train": len(run.train_ds), "num_val": len(run.val_ds), "baseline_mae": run.baseline,
        "num_processes": k, "global_batch_size": cfg.batch_size * k})


def _train_epoch(run: _Run, epoch: int, meter: ProgressMeter) -> list[float]:
    """One epoch's optimizer steps; returns each step's mean loss over its global batch."""
    acc, cfg, sampler, n = run.accelerator, run.cfg, run.sampler, len(run.train_ds)
    sampler.set_epoch(epoch)
    run.train_loader.set_epoch(epoch)
    losses = []
    batches = iter(run.train_loader)
    for samples, _micros in sampler.step_sizes():   # one micro-batch per step
        slots, batch = next(batches)
        slots = slots.cpu()
        # a batch smaller than K is on every rank: its local BatchNorm statistics are the global ones
        set_batchnorm_sync(run.model, bool((slots < n).all()))
        share = training_step(run.model, batch, run.optimizer, acc, cfg.smooth_l1_beta, cfg.max_grad_norm,
                              weights=slot_weights(slots, n, run.k).to(acc.device), num_samples=samples)
        loss = reduce_sum(acc, share)
        if not acc.optimizer_step_was_skipped:
            run.scheduler.step()
        losses.append(loss)
        acc.log({"train/loss": loss}, step=(epoch - 1) * sampler.steps_per_epoch + len(losses))
        meter.update(samples, extra=f"loss={loss:.4f}")
    assert next(batches, None) is None, "loader yielded more batches than its plan"
    return losses


def _write_best(run: _Run, tmp: Path, metrics: dict) -> None:
    """best/: the model files, metrics.json and the model card."""
    write_pacnet_files(run.accelerator.unwrap_model(run.model), tmp)
    write_json_atomic(tmp / "metrics.json", metrics)
    h, cfg = run.history, run.cfg
    summary = {"best_epoch": metrics["epoch"], "selection_mae_pp": metrics["val_mae"],
               "mean_predictor_mae_pp": metrics["baseline_mae"], "train_loss_first_epoch": h[0]["train_loss"],
               "train_loss_best_epoch": h[-1]["train_loss"], "epochs_run": len(h),
               "num_train": len(run.train_ds), "num_selection": len(run.val_ds)}
    write_card(tmp, build_card(
        title=f"PAC-Net ({run.model_config.head} head)", kind="pacnet", library_name="pytorch",
        description=("Progress estimation (ResNet frames + Transformer + CLIP text) trained with dynamic "
                     "temporal cropping; the epoch was chosen on the selection split (MAE in percentage "
                     "points), never on the evaluation videos. Load with `pecn_ml.models.pacnet.load_pacnet`."),
        context=run.context, training_config=asdict(cfg), seed=cfg.seed, loss_summary=summary,
        extra={"head": run.model_config.head, "model_config": run.model_config.to_dict()}))


def _epoch(run: _Run, epoch: int, meter: ProgressMeter) -> dict:
    """Train, validate, write best/ (rank 0, on a new best) and last/; the epoch's history row."""
    acc, t0 = run.accelerator, time.perf_counter()
    run.train_ds.set_epoch(epoch)
    steps = ProgressMeter(f"pacnet epoch {epoch}", total=len(run.train_ds), log=run.log,
                          every_s=run.cfg.log_every_s, unit="videos")
    losses = _train_epoch(run, epoch, steps)
    preds, targets = _evaluate(run, run.model, run.val_ds, acc)
    val_mae = mae_percent(preds, targets)
    row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_mae": val_mae,
           "lr": float(run.scheduler.get_last_lr()[-1]), "seconds": round(time.perf_counter() - t0, 3)}
    run.history.append(row)
    acc.log({"val/mae_pp": val_mae, "val/baseline_mae_pp": run.baseline, "train/epoch_loss": row["train_loss"],
             "train/lr": row["lr"]}, step=epoch * run.sampler.steps_per_epoch)
    if val_mae < run.best_mae:
        run.best_mae, run.best_epoch = val_mae, epoch
        if acc.is_main_process:
            with atomic_dir(run.out_dir / "best") as tmp:
                _write_best(run, tmp, {"epoch": epoch, "val_mae": val_mae, "baseline_mae": run.baseline,
                                       "mean_train_progress": run.mean_progress})
    scaffold.save_checkpoint(acc, run.out_dir / "last", run.state(epoch))   # best/ and last/ in place for all
    meter.update(1, extra=f"epoch {epoch}: train_loss={row['train_loss']:.4f} val_mae={val_mae:.2f}pp "
                          f"baseline={run.baseline:.2f}pp best={run.best_mae:.2f}pp@{run.best_epoch}")
    return row


def _result(run: _Run, state: dict, resumed_from: int) -> PacNetTrainResult:
    best = run.out_dir / "best"
    if not (best / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{best / WEIGHTS_NAME}: best checkpoint missing")
    files = folder_manifest(best)
    return PacNetTrainResult(
        val_mae=float(state["best_val_mae"]), baseline_mae=float(state["baseline_mae"]),
        mean_train_progress=float(state["mean_train_progress"]),
        best_epoch=int(state["best_epoch"]), epochs_run=int(state["epoch"]),
        resumed_from_epoch=resumed_from, history=list(state["history"]), best_dir=best,
        weights_sha256=sha256_file(best / WEIGHTS_NAME), checkpoint_sha256=manifest_sha256(files),
        checkpoint_files=files, num_train=len(run.train_ds), num_val=len(run.val_ds),
        num_processes=int(state.get("num_processes", 1)),
        global_batch_size=int(state["fingerprint"]["train_config"]["batch_size"]))


def _test_scores(run: _Run, accelerator: Any) -> dict:
    """best/'s MAE and the mean predictor's on the fixed test crops (sharded as validation); {}
    without test entries."""
    if run.test_ds is None:
        return {}
    model = load_pacnet(run.out_dir / "best", device=accelerator.device)
    preds, targets = _evaluate(run, model, run.test_ds, accelerator)
    return {"test_mae": mae_percent(preds, targets),
            "test_baseline_mae": mae_percent(run.mean_progress, targets),
            "num_test": len(run.test_ds)}


def _finished(run: _Run, state: dict) -> PacNetTrainResult:
    """A run whose last/ already holds every epoch: its result (and test score), no training."""
    run.log(f"pacnet: {run.out_dir} already finished {state['epoch']} epochs; nothing to do")
    result = _result(run, state, int(state["epoch"]))
    if run.test_ds is None:
        return result
    accelerator = scaffold.build_accelerator(run.cfg.mixed_precision, run.cfg.cpu, run.log)
    try:
        return replace(result, **_test_scores(run, accelerator))
    finally:
        accelerator.end_training()


def train_pacnet(model_config: PacNetConfig, train_config: PacNetTrainConfig, cache: Any,
                 train_entries: Sequence[Mapping], val_entries: Sequence[Mapping],
                 out_dir: str | os.PathLike, *, log: Optional[LogFn] = None,
                 resume: bool | str = True,
                 on_epoch_end: Optional[Callable[[int, dict], None]] = None,
                 tracking: Optional[TrackingConfig] = None, test_entries: Sequence[Mapping] = (),
                 card: Optional[CardContext] = None) -> PacNetTrainResult:
    """Train PAC-Net; returns the best selection MAE beside the mean-predictor floor.

    `val_entries` pick the best epoch, `test_entries` score the best model once (`test_mae`); the
    three must be disjoint (`SplitOverlap`). `resume=True` continues from out_dir/last exactly as an
    uninterrupted run (ValueError for another run's), `"auto"` starts another run's over, `False`
    always starts over. `on_epoch_end(epoch, row)` runs after each epoch's checkpoints (on every
    rank). `tracking`: default TensorBoard in `{out_dir}/logs`. `card`: the caller's context for
    best/'s model card. Under `torchrun` every rank gets the same result; rank 0 logs and writes.
    """
    cfg = train_config
    run = _data(model_config, cfg, cache, train_entries, val_entries, test_entries, Path(out_dir),
                scaffold.rank0_log(log), card)
    state = scaffold.resumable(run.out_dir / "last", run.fingerprint, run.log, strict=resume != "auto") if resume else None
    if state is not None and state["epoch"] >= cfg.epochs:
        return _finished(run, state)
    _setup(run, state, tracking)
    acc = run.accelerator
    run.log(f"pacnet: {len(run.train_ds)} train / {len(run.val_ds)} selection / "
            f"{len(run.test_ds or [])} test videos, head={model_config.head}, device={acc.device}, "
            f"mixed_precision={cfg.mixed_precision}, {run.k} process(es) x batch {cfg.batch_size}, "
            f"mean-progress baseline MAE {run.baseline:.2f} pp")
    meter = ProgressMeter(f"pacnet epochs {run.start_epoch + 1}..{cfg.epochs}", total=cfg.epochs - run.start_epoch,
                          log=run.log, every_s=0, unit="epochs")
    try:
        for epoch in range(run.start_epoch + 1, cfg.epochs + 1):
            row = _epoch(run, epoch, meter)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        result = _result(run, run.state(cfg.epochs), run.start_epoch)
        scores = _test_scores(run, acc)
        if scores:
            acc.log({"test/mae_pp": scores["test_mae"], "test/baseline_mae_pp": scores["test_baseline_mae"]},
                    step=cfg.epochs * run.sampler.steps_per_epoch)
            run.log(f"pacnet: test MAE {scores['test_mae']:.2f} pp (mean predictor {scores['test_baseline_mae']:.2f} "
                    f"pp) on {scores['num_test']} evaluation videos, best epoch {result.best_epoch}")
            result = replace(result, **scores)
        tag_run(acc, {"checkpoint_sha256": result.checkpoint_sha256})
    finally:
        acc.end_training()
    return replace(result, tracking=run.tracked)

