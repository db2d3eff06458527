"""Small typed handles (path + sha256 + what a reader needs) that the assets pass to each other as JSON.

Each artifact `verify()`s its files against the recorded sha256 (`ArtifactChanged` otherwise; a model
folder is covered by the sha of its manifest, older handles by one file or the weight files, with a
`PartialShaWarning`), lists `problems()` (blocking) and `warnings()`, and builds the UI `metadata()`
as plain values (Path, `Url`, `Table`, dicts).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from pecn_ml.training.tracking import TrackingInfo
from pecn_ml.utils.codec import decode
from pecn_ml.utils.failures import ArtifactChanged
from pecn_ml.utils.files import ManifestMismatch, check_manifest, sha256_file
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

MIN_STEPS_TO_JUDGE = 10        # fewer optimizer steps: a loss decrease is noise, only warned about
MIN_VAL_VIDEOS_TO_JUDGE = 50   # fewer validation videos: PAC-Net vs the mean predictor is noise, only warned about
SSIM_RANGE, PSNR_RANGE = (-1.0, 1.0), (0.0, 100.0)   # PSNR of identical images is capped at 100 dB
PREDICTS_MOTION_ALPHA = 0.05   # one-sided paired p below which the model beats the latent copy in the motion region
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
PACNET_WEIGHTS = "model.safetensors"
MANIFEST = "manifest"                  # sha256 of the folder's manifest: every file its loader reads
LEGACY_UNET = f"file:{UNET_WEIGHTS.as_posix()}"   # checkpoints recorded before manifests
LEGACY_PACNET = f"file:{PACNET_WEIGHTS}"
LEGACY_WEIGHTS = "weight files"        # pecn_ml.models.weights.weights_sha256 (base weights before manifests)


class PartialShaWarning(UserWarning):
    """A handle's sha256 is of an older scheme that covers only part of its folder."""


class Url(str):
    """Metadata text that is a link (or a tracking URI)."""


class Table(list):
    """Metadata rows (dicts) shown as a table; `columns` = ((name, "string"|"float"|"int", description), ...)."""

    def __init__(self, rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...]):
        super().__init__(rows)
        self.columns = tuple(columns)


def _check_sha(what: str, path: Path, recorded: str, actual_of=sha256_file) -> None:
    if not path.exists():
        raise ArtifactChanged(f"{what}: {path} is gone (recorded sha256 {recorded[:12]})")
    actual = actual_of(path)
    if actual != recorded:
        raise ArtifactChanged(f"{what}: {path} changed since it was recorded "
                              f"(sha256 {actual[:12]} != {recorded[:12]})")


def _check_folder(what: str, folder: Path, recorded: str, scheme: str, files: Mapping[str, str]) -> None:
    """`folder` still holds what `recorded` (a sha256 of `scheme`) covers; ArtifactChanged otherwise."""
    if scheme == MANIFEST:
        try:
            check_manifest(folder, recorded, files)
        except ManifestMismatch as e:
            raise ArtifactChanged(f"{what}: {e}") from None
        return
    if scheme.startswith("file:"):
        path, sha_of, covered = folder / scheme.removeprefix("file:"), sha256_file, scheme.removeprefix("file:")
    elif scheme == LEGACY_WEIGHTS:
        from pecn_ml.models.weights import weights_sha256

        path, sha_of, covered = folder, weights_sha256, "its weight files"
    else:
        raise ArtifactChanged(f"{what}: {folder}: unknown sha256 scheme {scheme!r} (known: {MANIFEST!r}, "
                              f"'file:<path>', {LEGACY_WEIGHTS!r})")
    warnings.warn(f"{what}: {folder}: its sha256 was recorded before shas covered whole folders and covers "
                  f"only {covered}; its other files are not checked (re-materialise it to record a manifest "
                  f"sha256)", PartialShaWarning, stacklevel=3)
    _check_sha(what, path, recorded, sha_of)


def _or_nan(value: Optional[float]) -> float:
    """A float; NaN for None (not measured: e.g. a mean of evaluations older than the metric)."""
    return math.nan if value is None else float(value)


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def tracking_metadata(info: Optional[TrackingInfo]) -> dict[str, Any]:
    """Where a training run logged: the TensorBoard folder, or the MLflow URI, experiment and run."""
    if info is None or info.backend == "none":
        return {"tracking": "none"}
    if info.backend == "tensorboard":
        return {"tracking": "tensorboard", "tensorboard_dir": Path(info.log_dir or "")}
    out: dict[str, Any] = {"tracking": "mlflow", "mlflow_tracking_uri": Url(info.tracking_uri or ""),
                           "mlflow_experiment": info.experiment or "", "mlflow_run_id": info.run_id or ""}
    if (info.tracking_uri or "").startswith(("http://", "https://")) and info.run_id:
        out["mlflow_run"] = Url(f"{info.tracking_uri.rstrip('/')}/#/experiments/-/runs/{info.run_id}")
    return out


@dataclass(frozen=True)
class Artifact:
    """Base of the handles: JSON round trip, and the defaults of the checks (none)."""

    def verify(self) -> "Artifact":
        return self

    def _judged(self) -> list[tuple[bool, str]]:
        """(blocking, message) of each failed check: a problem, or only a warning."""
        return []

    def problems(self) -> list[str]:
        return [message for blocking, message in self._judged() if blocking]

    def warnings(self) -> list[str]:
        return [message for blocking, message in self._judged() if not blocking]

    def metadata(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class FileArtifact(Artifact):
    """An artifact that is one file (a JSON of results, a workbook): its path and sha256."""

    path: str
    sha256: str

    def verify(self) -> "FileArtifact":
        _check_sha(type(self).__name__, Path(self.path), self.sha256)
        return self

    def _json(self) -> Any:
        self.verify()
        return json.loads(Path(self.path).read_text(encoding="utf-8"))


def artifact_from_json(data: Mapping[str, Any]) -> Artifact:
    """The artifact a `to_json()` dict describes."""
    kind = data.get("type")
    if kind not in ARTIFACT_TYPES:
        raise ValueError(f"not a known artifact type: {kind!r} (known: {sorted(ARTIFACT_TYPES)})")
    fields = {k: v for k, v in data.items() if k != "type"}
    return decode(ARTIFACT_TYPES[kind], fields, kind, ignore_unknown=True)   # old handles may hold dropped fields


# --- data ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FilteredAnnotations(Artifact):
    """The filtered annotation files (train + eval sets) and their sha256s."""

    annotations_dir: str
    files: Mapping[str, str]          # file name -> sha256
    version: str                      # one string over all files (the asset's data version)
    counts: Mapping[str, int] = field(default_factory=dict)   # entries per file

    def verify(self) -> "FilteredAnnotations":
        for name, sha in self.files.items():
            _check_sha("filtered annotations", Path(self.annotations_dir) / name, sha)
        return self

    def entries(self, name: str) -> list[dict]:
        """The entries of one file (`train_filtered.json`, `val_filtered.json`, ...), sha checked."""
        from pecn_ml.data.annotations import load_filtered

        path = Path(self.annotations_dir) / name
        _check_sha("filtered annotations", path, self.files[name])
        return load_filtered(path)

    def train(self) -> list[dict]:
        return self.entries(TRAIN_FILE)

    def eval_set(self, eval_set: str) -> list[dict]:
        return self.entries(EVAL_SETS[eval_set])

    def all_eval_sets(self) -> list[dict]:
        """Every eval set's entries, concatenated (PAC-Net's validation videos)."""
        return [e for name in EVAL_SETS for e in self.eval_set(name)]

    def video_ids(self) -> list[str]:
        """Every video id of the files, in file order, without repeats."""
        return list(dict.fromkeys(entry["id"] for name in self.files for entry in self.entries(name)))

    def metadata(self) -> dict[str, Any]:
        return {"annotations_version": self.version, "files": [str(Path(self.annotations_dir) / n) for n in self.files]}


@dataclass(frozen=True)
class FrameCacheRef(Artifact):
    """One resolution of the frame cache, by its manifest version."""

    data_dir: str
    resolution: int
    version: str

    def open(self) -> Any:
        """The `FrameCache`; ArtifactChanged if it was rebuilt with other contents since."""
        from pecn_ml.data.frame_cache import open_frame_cache

        cache = open_frame_cache(self.data_dir, self.resolution)
        if cache.version != self.version:
            raise ArtifactChanged(f"frame cache {cache.root} changed since it was recorded "
                                  f"(version {cache.version[:12]} != {self.version[:12]})")
        return cache

    def verify(self) -> "FrameCacheRef":
        self.open()
        return self

    def metadata(self) -> dict[str, Any]:
        return {"frame_cache_version": self.version, "frame_cache_resolution": self.resolution}


@dataclass(frozen=True)
class Weights(Artifact):
    """Base weights (hub snapshot or demo stand-in): a folder and the sha256 of its weight files."""

    role: str                         # pix2pix_base, resnet_base, clip_text_base
    path: str
    sha256: str                       # of the folder's manifest (older handles: weights_sha256 of its weight files)
    source: str = ""
    name: str = ""                    # hub id, or "stand-in for <hub id>"
    revision: str = ""                # hub commit, or the stand-in's folder name (its content key)
    sha256_scheme: str = LEGACY_WEIGHTS   # what `sha256` covers: MANIFEST, or the old weight files only
    files: Mapping[str, str] = field(default_factory=dict)   # the manifest: relative path -> sha256

    def verify(self) -> "Weights":
        _check_folder(self.role, Path(self.path), self.sha256, self.sha256_scheme, self.files)
        return self

    def card_base(self):
        """These weights as a model card names a base (`model_cards.BaseWeights`, license included)."""
        from pecn_ml.model_cards import BaseWeights, base_license

        name = self.name or self.path
        return BaseWeights(role=self.role, name=name, revision=self.revision, sha256=self.sha256,
                           license=base_license(self.path, name))

    def lineage(self) -> dict[str, Any]:
        """What a model trained from these weights records about them."""
        return {f"{self.role}_sha256": self.sha256, f"{self.role}_path": Path(self.path)}

    def metadata(self) -> dict[str, Any]:
        return {"path": Path(self.path), "weights_sha256": self.sha256, "sha256_scheme": self.sha256_scheme,
                "source": self.source}


# --- PAC-Net ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PacNetCheckpoint(Artifact):
    """The best PAC-Net of one run: epoch picked on the selection split (`val_mae`), judged on the
    evaluation videos (`test_mae`) where there are any."""

    path: str                         # .../pacnet_{head}/runs/{run}/best
    sha256: str                       # of the folder's manifest (older handles: of model.safetensors)
    head: str
    val_mae: float                    # percentage points, on the selection split (picked the epoch)
    baseline_mae: float               # the mean predictor on the same crops
    best_epoch: int
    epochs: int
    run_dir: str
    run_id: str = ""                  # the Dagster run that trained it
    num_val: int = 0                  # selection videos val_mae is over
    tracking: Optional[TrackingInfo] = None
    test_mae: Optional[float] = None  # the chosen model on the evaluation videos (test score; None: none)
    test_baseline_mae: Optional[float] = None   # the mean predictor on the same test crops
    num_test: int = 0                 # evaluation videos the test MAEs are over
    selection_split: str = ""         # JSON file of the selection split's ids
    selection_split_sha256: str = ""
    sha256_scheme: str = LEGACY_PACNET   # what `sha256` covers: MANIFEST, or the old weights file only
    files: Mapping[str, str] = field(default_factory=dict)   # the manifest: relative path -> sha256

    @classmethod
    def from_result(cls, result: Any, head: str, run_dir: Path, run_id: str,
                    selection_split: Optional[Path] = None) -> "PacNetCheckpoint":
        """The handle of a `PacNetTrainResult` (and the file of its selection split)."""
        return cls(path=str(result.best_dir), sha256=result.checkpoint_sha256, head=head,
                   val_mae=float(result.val_mae), baseline_mae=float(result.baseline_mae),
                   best_epoch=int(result.best_epoch), epochs=int(result.epochs_run), run_dir=str(run_dir),
                   run_id=run_id, num_val=int(result.num_val), tracking=result.tracking,
                   test_mae=float(result.test_mae) if result.num_test else None,
                   test_baseline_mae=float(result.test_baseline_mae) if result.num_test else None,
                   num_test=int(result.num_test), selection_split=str(selection_split or ""),
                   selection_split_sha256=sha256_file(selection_split) if selection_split else "",
                   sha256_scheme=MANIFEST, files=dict(result.checkpoint_files))

    def selection_ids(self) -> list[str]:
        """The ids of the selection split ([] without a split file), its sha checked."""
        if not self.selection_split:
            return []
        _check_sha("pacnet selection split", Path(self.selection_split), self.selection_split_sha256)
        return list(json.loads(Path(self.selection_split).read_text(encoding="utf-8"))["ids"])

    def verify(self) -> "PacNetCheckpoint":
        _check_folder("pacnet checkpoint", Path(self.path), self.sha256, self.sha256_scheme, self.files)
        return self

    def _judged(self) -> list[tuple[bool, str]]:
        """The MAE judged is the test score where there is one (the selection MAE chose the epoch, so
        it is biased low), else the validation MAE; too few videos: only a warning."""
        name, mae, baseline, n = (("test_mae", _or_nan(self.test_mae), _or_nan(self.test_baseline_mae), self.num_test)
                                  if self.num_test > 0 else ("val_mae", self.val_mae, self.baseline_mae, self.num_val))
        if not _finite(mae, baseline):
            return [(True, f"{name} {mae} or its mean predictor's {baseline} is not finite")]
        if mae < baseline:
            return []
        beaten = f"{name} {mae:.2f} pp is not below the mean predictor's {baseline:.2f} pp"
        if n >= MIN_VAL_VIDEOS_TO_JUDGE:
            return [(True, beaten)]
        what = "evaluation" if name == "test_mae" else "validation"
        return [(False, f"{beaten}; only {n} {what} videos (< {MIN_VAL_VIDEOS_TO_JUDGE}): too few to judge")]

    def metadata(self) -> dict[str, Any]:
        test = ({"test_mae": _or_nan(self.test_mae), "test_baseline_mae": _or_nan(self.test_baseline_mae),
                 "num_test": self.num_test} if self.num_test > 0 else {})
        split = ({"selection_split": Path(self.selection_split), "selection_split_sha256": self.selection_split_sha256,
                  "num_selection": self.num_val} if self.selection_split else {})
        return {"val_mae": float(self.val_mae), "baseline_mae": float(self.baseline_mae),
                "checkpoint": Path(self.path), "checkpoint_sha256": self.sha256,
                "checkpoint_sha256_scheme": self.sha256_scheme, "run_dir": Path(self.run_dir),
                "epochs": self.epochs, "best_epoch": self.best_epoch, "num_val": self.num_val,
                **test, **split, **tracking_metadata(self.tracking)}


@dataclass(frozen=True)
class ProgressEstimates(FileArtifact):
    """PAC-Net's estimate at the input frame per video (a JSON file of rows)."""

    pacnet_sha256: str                # the checkpoint that estimated
    n: int
    val_mae: float
    pacnet_run_id: str = ""           # the Dagster run that trained that checkpoint

    def percent_by_video(self) -> dict[str, int]:
        """{video_id: estimated percent}, the file's sha checked."""
        return {r["video_id"]: int(r["estimate_percent"]) for r in self._json()["rows"]}

    def lineage(self) -> dict[str, Any]:
        """What a consumer of the estimates records (the prompts' progress source)."""
        return {"progress_source": "PAC-Net", "progress_estimates_sha256": self.sha256,
                "pacnet_checkpoint_sha256": self.pacnet_sha256}

    def metadata(self) -> dict[str, Any]:
        return {"path": Path(self.path), "n": self.n, "val_mae": float(self.val_mae),
                "pacnet_checkpoint_sha256": self.pacnet_sha256}


# --- InstructPix2Pix -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pix2PixCheckpoint(Artifact):
    """One fine-tuned InstructPix2Pix (variant, seed): a full or a light (UNet + base reference) folder."""

    path: str                         # .../{model}/seed_{seed}/runs/{run}/model (never rewritten)
    sha256: str                       # of the folder's manifest (older handles: of the UNet's weights file)
    variant: str
    seed: int
    steps: int
    final_loss: float                 # mean over the last epoch's optimizer steps
    first_loss: float                 # mean over the first `loss_window` optimizer steps
    loss_window: int                  # an epoch's worth of steps (at most half of the run)
    run_dir: str
    run_id: str = ""                  # the Dagster run that trained it
    base_sha256: str = ""             # the pix2pix_base weights it was fine-tuned from
    progress_source: str = "frame count"
    tracking: Optional[TrackingInfo] = None
    sha256_scheme: str = LEGACY_UNET  # what `sha256` covers: MANIFEST, or the old UNet weights file only
    files: Mapping[str, str] = field(default_factory=dict)   # the manifest: relative path -> sha256

    @classmethod
    def from_result(cls, result: Any, variant: str, seed: int, run_dir: Path, run_id: str, base_sha256: str,
                    progress_source: str) -> "Pix2PixCheckpoint":
        """The handle of a `Pix2PixTrainResult`."""
        return cls(path=str(result.model_dir), sha256=result.checkpoint_sha256, variant=variant, seed=int(seed),
                   steps=int(result.steps), final_loss=float(result.final_loss),
                   first_loss=float(result.first_loss), loss_window=int(result.loss_window),
                   run_dir=str(run_dir), run_id=run_id, base_sha256=base_sha256,
                   progress_source=progress_source, tracking=result.tracking, sha256_scheme=MANIFEST,
                   files=dict(result.checkpoint_files))

    def verify(self) -> "Pix2PixCheckpoint":
        _check_folder("ip2p checkpoint", Path(self.path), self.sha256, self.sha256_scheme, self.files)
        from pecn_ml.models.pix2pix import BASE_REF, resolve_base

        if (Path(self.path) / BASE_REF).is_file():   # a light checkpoint: its base's frozen parts too
            try:
                resolve_base(self.path)
            except ValueError as e:
                raise ArtifactChanged(f"ip2p checkpoint: {e}") from None
        return self

    def _judged(self) -> list[tuple[bool, str]]:
        if not _finite(self.final_loss, self.first_loss):
            return [(True, f"final loss {self.final_loss} or first loss {self.first_loss} is not finite")]
        if self.final_loss < self.first_loss:
            return []
        if self.steps >= MIN_STEPS_TO_JUDGE:
            return [(True, f"final loss {self.final_loss:.5f} (last epoch) is not below the first "
                           f"{self.first_loss:.5f} (first {self.loss_window} steps)")]
        return [(False, f"only {self.steps} optimizer steps (< {MIN_STEPS_TO_JUDGE}): the loss did not decrease, "
                        f"too few steps to judge")]

    def metadata(self) -> dict[str, Any]:
        return {"checkpoint": Path(self.path), "checkpoint_sha256": self.sha256,
                "checkpoint_sha256_scheme": self.sha256_scheme, "seed": self.seed,
                "steps": self.steps, "final_loss": float(self.final_loss), "first_loss": float(self.first_loss),
                "loss_window": self.loss_window, "run_dir": Path(self.run_dir),
                "progress_source": self.progress_source, **tracking_metadata(self.tracking)}


# --- evaluation ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSetResult:
    """One eval set of an evaluation: its results.json and the numbers the checks look at."""

    eval_set: str
    results_json: str
    sha256: str
    n: int
    n_expected: int                   # min(samples requested, eligible videos of the eval set)
    mean: Mapping[str, float]         # "ssim", "psnr", "motion_psnr", "motion_mae" (see pecn_ml.sampling)
    std: Mapping[str, float]
    baseline_mean: Mapping[str, float]   # copy-frame on the same samples
    autoencoder_mean: Mapping[str, float]
    latent_copy_mean: Mapping[str, float] = field(default_factory=dict)   # VAE round trip of the input
    n_static: int = 0                 # samples whose motion mask was empty (scored on the whole frame)
    ids_sha256: str = ""              # sha256 of the drawn video ids (results.json `selection`)

    @classmethod
    def from_results(cls, eval_set: str, results_json: Path, n_expected: int) -> "EvalSetResult":
        results = json.loads(Path(results_json).read_text(encoding="utf-8"))
        return cls(eval_set=eval_set, results_json=str(results_json), sha256=sha256_file(results_json),
                   n=int(results["n"]), n_expected=int(n_expected), mean=results["mean"], std=results["std"],
                   baseline_mean=results["baseline_mean"], autoencoder_mean=results["autoencoder_mean"],
                   latent_copy_mean=results.get("latent_copy_mean", {}), n_static=int(results.get("n_static", 0)),
                   ids_sha256=str(results.get("selection", {}).get("ids_sha256", "")))

    def method_means(self) -> dict[str, Mapping[str, float]]:
        """{metadata key prefix: means} of the model and the three references, in table order."""
        return {"": self.mean, "latent_copy_": self.latent_copy_mean, "baseline_": self.baseline_mean,
                "autoencoder_": self.autoencoder_mean}

    def problems(self) -> list[str]:
        out = []
        if self.n != self.n_expected:
            out.append(f"{self.eval_set}: n = {self.n} samples, expected {self.n_expected}")
        for name, values in (("model", self.mean), ("copy-frame", self.baseline_mean),
                             ("autoencoder", self.autoencoder_mean),
                             *((("latent copy", self.latent_copy_mean),) if self.latent_copy_mean else ())):
            for metric, (lo, hi) in (("ssim", SSIM_RANGE), ("psnr", PSNR_RANGE)):
                v = values.get(metric)
                if not _finite(v) or not lo <= v <= hi:
                    out.append(f"{self.eval_set}: {name} {metric} {v} is not finite within [{lo}, {hi}]")
        return out

    def warnings(self) -> list[str]:
        return [f"{self.eval_set}: {m} {self.mean[m]:.4f} is below the copy-frame baseline's "
                f"{self.baseline_mean[m]:.4f}" for m in ("ssim", "psnr")
                if _finite(self.mean.get(m), self.baseline_mean.get(m)) and self.mean[m] < self.baseline_mean[m]]


@dataclass(frozen=True)
class Evaluation(Artifact):
    """One trained model (variant, seed) sampled and scored on every eval set."""

    variant: str
    seed: int
    checkpoint: str
    checkpoint_sha256: str
    sets: Mapping[str, EvalSetResult]
    progress_source: str = "frame count"
    checkpoint_sha256_scheme: str = LEGACY_UNET   # what checkpoint_sha256 covers (Pix2PixCheckpoint.sha256_scheme)
    checkpoint_files: Mapping[str, str] = field(default_factory=dict)   # the checkpoint's manifest

    def verify(self) -> "Evaluation":
        for s in self.sets:
            self._checked(s)
        return self

    def _checked(self, eval_set: str) -> Path:
        r = self.sets[eval_set]
        _check_sha(f"evaluation {self.variant} seed {self.seed}", Path(r.results_json), r.sha256)
        return Path(r.results_json)

    def verify_checkpoint(self) -> "Evaluation":
        """The checkpoint these numbers came from still exists and hashes to the recorded sha."""
        _check_folder(f"checkpoint of evaluation {self.variant} seed {self.seed}", Path(self.checkpoint),
                      self.checkpoint_sha256, self.checkpoint_sha256_scheme, self.checkpoint_files)
        return self

    def results(self, eval_set: str) -> dict:
        """The results.json of one eval set (samples, means, config), sha checked."""
        return json.loads(self._checked(eval_set).read_text(encoding="utf-8"))

    def _judged(self) -> list[tuple[bool, str]]:
        sets = self.sets.values()
        return [(True, p) for r in sets for p in r.problems()] + [(False, w) for r in sets for w in r.warnings()]

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scores": self.scores_table(),
                               "checkpoint_sha256": self.checkpoint_sha256, "checkpoint": Path(self.checkpoint),
                               "seed": self.seed, "progress_source": self.progress_source}
        for s, r in self.sets.items():
            for prefix, means in r.method_means().items():
                out.update({f"{s}_{prefix}{m}_mean": _or_nan(means.get(m)) for m in ("ssim", "psnr") + MOTION_METRICS})
            ceiling = r.autoencoder_mean["ssim"]
            out.update({f"{s}_ssim_std": float(r.std["ssim"]), f"{s}_psnr_std": float(r.std["psnr"]),
                        f"{s}_ssim_vs_ceiling": float(r.mean["ssim"] / ceiling) if ceiling else math.nan,
                        f"{s}_n": r.n, f"{s}_results_json": Path(r.results_json), f"{s}_n_static": r.n_static})
            if r.ids_sha256:
                out[f"{s}_eval_ids_sha256"] = r.ids_sha256
        out.update(self.pooled())
        return out

    def pooled(self) -> dict[str, Any]:
        """Means over every sample scored (eval sets weighted by n) of the model and the references,
        `ssim_vs_ceiling`, `n` and `summary_sets`."""
        n = sum(r.n for r in self.sets.values())
        out: dict[str, Any] = {"n": n, "summary_sets": "+".join(self.sets)}
        for key in METHOD_NAMES:
            for metric in ("ssim", "psnr") + MOTION_METRICS:
                out[f"{key}{metric}_mean"] = (sum(_or_nan(r.method_means()[key].get(metric)) * r.n
                                                  for r in self.sets.values()) / n if n else math.nan)
        ceiling = out["autoencoder_ssim_mean"]
        out["ssim_vs_ceiling"] = out["ssim_mean"] / ceiling if ceiling else math.nan
        return out

    def scores_table(self) -> Table:
        """One row per eval set x method: SSIM, PSNR, motion PSNR means (4 significant digits) and n."""
        rows = [{"eval_set": s, "method": method, **{m: _sig(_or_nan(r.method_means()[prefix].get(m)))
                                                     for m in ("ssim", "psnr", "motion_psnr")}, "n": r.n}
                for s, r in self.sets.items() for prefix, method in METHOD_NAMES.items()]
        return Table(rows, SCORE_COLUMNS)

    def predicts_motion(self, alpha: float = PREDICTS_MOTION_ALPHA) -> tuple[list[str], dict[str, Any]]:
        """Per eval set, a one-sided paired t-test of the model's motion-region PSNR above the latent
        copy's; returns (warnings where not significant at `alpha` or untestable, metadata)."""
        warnings: list[str] = []
        meta: dict[str, Any] = {}
        for s in self.sets:
            samples = self.results(s).get("samples", [])
            if not all("motion_psnr" in x and "latent_copy_motion_psnr" in x for x in samples):
                warnings.append(f"{s}: no motion-region scores of the model and the latent copy in results.json")
                continue
            test = paired_greater([x["motion_psnr"] for x in samples], [x["latent_copy_motion_psnr"] for x in samples])
            meta.update({f"{s}_motion_psnr_diff_db": test["mean_diff"], f"{s}_p": test["p"], f"{s}_n": test["n"]})
            if test["reason"]:
                warnings.append(f"{s}: {test['reason']}")
            elif not (test["mean_diff"] > 0 and test["p"] < alpha):
                warnings.append(f"{s}: motion-region PSNR {test['mean_diff']:+.3f} dB vs the latent copy "
                                f"(one-sided paired p = {test['p']:.3g}, n = {test['n']}): not above it at "
                                f"p < {alpha}")
        return warnings, meta


METHOD_NAMES = {"": "model", "latent_copy_": "latent copy", "baseline_": "copy-frame", "autoencoder_": "ceiling"}
MOTION_METRICS = ("motion_psnr", "motion_mae")
SCORE_COLUMNS = (
    ("eval_set", "string", "eval set"),
    ("method", "string", "model; latent copy = VAE(input frame); copy-frame = the input frame; "
                         "ceiling = VAE(target)"),
    ("ssim", "float", "SSIM, mean over the samples"),
    ("psnr", "float", "PSNR (dB), mean over the samples"),
    ("motion_psnr", "float", "motion-region PSNR (dB): pixels where target and input differ by > 8/255, "
                             "dilated 2 px"),
    ("n", "int", "samples"),
)


def _sig(v: float, digits: int = 4) -> Optional[float]:
    """`v` to `digits` significant digits; None when not finite."""
    return float(f"{v:.{digits}g}") if _finite(v) else None


def paired_greater(a: list[float], b: list[float]) -> dict[str, Any]:
    """One-sided paired t-test of a > b: {"n", "mean_diff", "t", "p", "reason"} (non-finite pairs left
    out; reason when fewer than 2 pairs; equal differences: p = 0 when > 0, else 1)."""
    from scipy import stats

    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None and _finite(x, y)]
    d = [x - y for x, y in pairs]
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean_diff": sum(d) / n if n else float("nan"), "t": float("nan"),
                           "p": float("nan"), "reason": None}
    if n < 2:
        return {**out, "reason": f"n = {n} paired samples; at least 2 needed"}
    if max(d) - min(d) <= 1e-12 * max(1.0, max(abs(x) for x in d)):
        return {**out, "t": math.copysign(math.inf, out["mean_diff"]) if out["mean_diff"] else float("nan"),
                "p": 0.0 if out["mean_diff"] > 0 else 1.0}
    res = stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs], alternative="greater")
    return {**out, "t": float(res.statistic), "p": float(res.pvalue)}


@dataclass(frozen=True)
class CopyFrameBaseline(FileArtifact):
    """"Predict the input frame unchanged" on one eval set, per target frame (a results JSON)."""

    eval_set: str
    by_target: Mapping[str, Mapping[str, Any]]   # "21" -> {"ssim", "psnr", "motion_psnr", "n", "ids_sha256"}

    def rows(self) -> list[dict[str, Any]]:
        """One row per target frame: eval_set, target_idx, n, ssim_mean, psnr_mean, motion_psnr_mean."""
        return [{"eval_set": self.eval_set, "target_idx": int(t), "n": int(v["n"]),
                 "ssim_mean": float(v["ssim"]), "psnr_mean": float(v["psnr"]),
                 "motion_psnr_mean": _or_nan(v.get("motion_psnr"))}
                for t, v in sorted(self.by_target.items())]

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"results_json": Path(self.path)}
        for t, v in self.by_target.items():
            out.update({f"target{t}_ssim_mean": float(v["ssim"]), f"target{t}_psnr_mean": float(v["psnr"]),
                        f"target{t}_motion_psnr_mean": _or_nan(v.get("motion_psnr")), f"target{t}_n": int(v["n"])})
            if v.get("ids_sha256"):
                out[f"target{t}_eval_ids_sha256"] = str(v["ids_sha256"])
        return out


@dataclass(frozen=True)
class TTests(FileArtifact):
    """t_test_results.json: per seed and across seeds, with the shas of every model compared."""

    n_tests: int
    seeds: tuple[int, ...]
    models: Mapping[str, str]          # "{seed}|{variant}" -> checkpoint sha256

    def rows(self) -> list[dict]:
        return self._json()["tests"]

    def metadata(self) -> dict[str, Any]:
        return {"t_test_results": Path(self.path), "tests": self.n_tests, "seeds": list(self.seeds),
                "model_checkpoint_sha256": dict(self.models)}


@dataclass(frozen=True)
class Workbook(FileArtifact):
    """t_test_summary.xlsx."""

    def metadata(self) -> dict[str, Any]:
        return {"workbook": Path(self.path)}


ARTIFACT_TYPES: dict[str, type] = {t.__name__: t for t in (
    FilteredAnnotations, FrameCacheRef, Weights, PacNetCheckpoint, ProgressEstimates, Pix2PixCheckpoint,
    Evaluation, CopyFrameBaseline, TTests, Workbook)}
