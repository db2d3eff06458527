"""Base weights: what every model starts from, pinned so lineage runs from them to every metric.

In the real run (`full` profile) each asset resolves a hub name to one commit's files in the HF
cache (downloading them if needed) and records the commit and the weights' sha. In the demo the
same assets train small stand-ins on the synthetic training videos (`pecn_ml.models.standins`),
content-addressed: an unchanged input reuses the earlier build. Either way the asset's data
version is the weights' sha and its `path` is the folder downstream assets load.
"""

import dagster as dg
import numpy as np

from pecn_assets.assets.data import filtered_annotations, frame_cache
from pecn_assets.lineage import latest_upstream
from pecn_assets.metadata import image_md, table_md
from pecn_assets.partitions import PROFILE, from_resolution
from pecn_assets.resources import PecnSettings, PretrainedModels
from pecn_ml.data.annotations import load_filtered
from pecn_ml.data.frame_cache import open_frame_cache
from pecn_ml.models.standins import (BuiltStandin, build_standin_clip_text, build_standin_pix2pix,
                                     build_standin_resnet)
from pecn_ml.models.weights import ResolvedWeights, resolve_weights, weights_sha256
from pecn_ml.training.pix2pix import plot_loss_curve
from pecn_ml.utils.files import sha256_json
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

TRAINS_STANDINS = PROFILE.standins is not None


def _deps(resolution: int) -> list:
    """Stand-ins are trained on the frame cache's training videos; hub weights need no data."""
    if not TRAINS_STANDINS:
        return []
    return [filtered_annotations, dg.AssetDep(frame_cache, partition_mapping=from_resolution(resolution))]


def training_videos(settings: PecnSettings, resolution: int) -> tuple[list[np.ndarray], str, np.ndarray]:
    """Every frame of the training videos (one array per video), their data version, and the
    input frames of the basic eval set (held out, for the VAE round trip)."""
    cache = open_frame_cache(settings.data_path(), resolution)
    ann = settings.annotations_path()
    ids = [e["id"] for e in load_filtered(ann / TRAIN_FILE) if e["id"] in cache]
    val = [e["id"] for e in load_filtered(ann / EVAL_SETS["basic"]) if e["id"] in cache]
    held_out = np.stack([cache.frame(v, min(20, cache.num_frames(v) - 1)) for v in val])
    version = sha256_json({"frame_cache": cache.version, "videos": ids})
    return [cache.frames(v) for v in ids], version, held_out


def weights_metadata(weights: ResolvedWeights | BuiltStandin) -> dict:
    """The metadata every base-weights asset records (and its data version: the weights' sha)."""
    if isinstance(weights, ResolvedWeights):
        return {"source": "hub", "name": weights.name, "revision": weights.revision or "local folder",
                "path": dg.MetadataValue.path(str(weights.path)), "weights_sha256": weights.weights_sha256,
                "files": dg.MetadataValue.json(weights.files)}
    report = weights.report
    curves = {k: v for k, v in report.items() if isinstance(v, dict) and "values" in v}
    pngs = [plot_loss_curve(c["values"], weights.path.parent / "curves" / f"{weights.path.name}-{k}.png",
                            title=f"{weights.kind} stand-in: {k.replace('_', ' ')}") for k, c in curves.items()]
    summary = {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
    return {"source": "stand-in trained on the synthetic training videos", "path": dg.MetadataValue.path(
        str(weights.path)), "weights_sha256": weights.weights_sha256, "reused": weights.reused,
        "build": dg.MetadataValue.md(table_md([summary])),
        **({"loss_curves": dg.MetadataValue.md(image_md(pngs, "training losses"))} if pngs else {})}


def _result(weights: ResolvedWeights | BuiltStandin, **extra) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={**weights_metadata(weights), **extra},
                                data_version=dg.DataVersion(weights.weights_sha256))


@dg.asset(group_name="pretrained", kinds={"pytorch"}, code_version="1",
          deps=_deps(PROFILE.pix2pix_resolution))
def pix2pix_base(context: dg.AssetExecutionContext, settings: PecnSettings,
                 models: PretrainedModels) -> dg.MaterializeResult:
    """InstructPix2Pix weights the variants are fine-tuned from: timbrooks/instruct-pix2pix pinned to a commit, or the demo's trained stand-in."""
    profile = settings.get_profile()
    if profile.standins is None:
        return _result(resolve_weights(models.pix2pix, models.pix2pix_revision))
    videos, version, held_out = training_videos(settings, profile.pix2pix_resolution)
    built = build_standin_pix2pix(settings.outputs_path() / "pretrained", videos, profile.standins, version,
                                  eval_frames=held_out, log=context.log.info)
    return _result(built, roundtrip_psnr=float(built.report.get("roundtrip_psnr", float("nan"))),
                   roundtrip_ssim=float(built.report.get("roundtrip_ssim", float("nan"))))


@dg.asset(group_name="pretrained", kinds={"pytorch"}, code_version="1",
          deps=_deps(PROFILE.pacnet_resolution))
def resnet_base(context: dg.AssetExecutionContext, settings: PecnSettings,
                models: PretrainedModels) -> dg.MaterializeResult:
    """PAC-Net's frame encoder: microsoft/resnet-50 pinned to a commit, or the demo's stand-in pretrained on where things move."""
    profile = settings.get_profile()
    if profile.standins is None:
        return _result(resolve_weights(models.resnet, models.resnet_revision))
    videos, version, _ = training_videos(settings, profile.pacnet_resolution)
    return _result(build_standin_resnet(settings.outputs_path() / "pretrained", videos, profile.standins,
                                        version, log=context.log.info))


@dg.asset(group_name="pretrained", kinds={"pytorch"}, code_version="1")
def clip_text_base(context: dg.AssetExecutionContext, settings: PecnSettings,
                   models: PretrainedModels) -> dg.MaterializeResult:
    """PAC-Net's text encoder: openai/clip-vit-base-patch32 pinned to a commit, or the demo's small random stand-in."""
    profile = settings.get_profile()
    if profile.standins is None:
        return _result(resolve_weights(models.clip_text, models.clip_text_revision))
    return _result(build_standin_clip_text(settings.outputs_path() / "pretrained", profile.standins,
                                           log=context.log.info))


def base_weights(context: dg.AssetExecutionContext, asset: str) -> tuple[str, dict]:
    """The folder of the latest `asset` materialisation, its sha checked, and lineage metadata."""
    up = latest_upstream(context.instance, asset)
    path, recorded = up.metadata["path"], up.metadata["weights_sha256"]
    sha = weights_sha256(path)
    if sha != recorded:
        raise dg.Failure(f"{path} changed since {asset} was materialised (sha {sha[:12]} != {recorded[:12]}): "
                         f"re-materialise {asset}")
    return path, {f"{asset}_sha256": sha, f"{asset}_path": dg.MetadataValue.path(path),
                  **up.as_metadata(asset)}
