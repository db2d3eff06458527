"""InstructPix2Pix assets: the four fine-tuned variants (target 21/25, with/without progress)."""


import json
from dataclasses import asdict, replace
from typing import Optional

import dagster as dg
from pydantic import Field

from pecn_assets.assets.data import filtered_annotations, frame_cache
from pecn_assets.assets.pretrained import base_weights, pix2pix_base
from pecn_assets.gpu import gpu_asset_args
from pecn_assets.lineage import latest_upstream
from pecn_assets.metadata import image_md
from pecn_assets.partitions import PROFILE, from_resolution, variant_partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.data.annotations import load_filtered
from pecn_ml.data.frame_cache import open_frame_cache
from pecn_ml.data.pairs import FramePairDataset
from pecn_ml.training.pix2pix import train_pix2pix
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE, VARIANTS


class ProgressSourceConfig(dg.Config):
    """Where progress prompts take their percentage from."""

    use_progress_estimator: bool = Field(
        default=False, description="progress variants: prompt with PAC-Net's estimate "
        "(latest `progress_estimates`) instead of input_idx / num_frames")


class Pix2PixRunConfig(ProgressSourceConfig):
    """Run options of `ip2p_model` (the hyper-parameters themselves live in the profile)."""

    seed: Optional[int] = Field(default=None, description="training seed; empty: the profile's")


def estimator_override(context, config_flag: bool) -> tuple[dict | None, dict]:
    """PAC-Net's estimated percent per video when asked, and metadata naming its source."""
    if not config_flag:
        return None, {"progress_source": "frame count"}
    up = latest_upstream(context.instance, "progress_estimates")
    rows = json.loads(open(up.metadata["path"], encoding="utf-8").read())["rows"]
    override = {r["video_id"]: int(r["estimate_percent"]) for r in rows}
    return override, {"progress_source": "PAC-Net", "pacnet_checkpoint_sha256": up.metadata["checkpoint_sha256"],
                      **up.as_metadata("progress_estimates")}


@dg.asset(
    group_name="pix2pix", partitions_def=variant_partitions, kinds={"pytorch"}, code_version="1",
    deps=[filtered_annotations, pix2pix_base,
          dg.AssetDep(frame_cache, partition_mapping=from_resolution(PROFILE.pix2pix_resolution))],
    **gpu_asset_args(),
)
def ip2p_model(context: dg.AssetExecutionContext, config: Pix2PixRunConfig,
               settings: PecnSettings) -> dg.MaterializeResult:
    """InstructPix2Pix fine-tuned on the four-task training set for one variant (partition)."""
    profile = settings.get_profile()
    variant = VARIANTS[context.partition_key]
    cache = open_frame_cache(settings.data_path(), profile.pix2pix_resolution)
    override, progress_meta = estimator_override(context, config.use_progress_estimator)
    ann = settings.annotations_path()

    def pairs(name: str) -> FramePairDataset:
        return FramePairDataset(cache, load_filtered(ann / name), input_idx=variant.input_idx,
                                target_idx=variant.target_idx, add_progress=variant.add_progress,
                                progress_estimates=override if variant.add_progress else None,
                                prompt_text=profile.prompt_text)

    train, val = pairs(TRAIN_FILE), pairs(EVAL_SETS["basic"])
    annotations = latest_upstream(context.instance, "filtered_annotations")
    train_config = profile.pix2pix_train if config.seed is None else replace(
        profile.pix2pix_train, seed=config.seed)
    if train_config.latent_cache_dir is None:  # one exact latent cache shared by the four variants
        train_config = replace(train_config, latent_cache_dir=str(settings.outputs_path() / "latent_cache"))
    base, base_meta = base_weights(context, "pix2pix_base")
    result = train_pix2pix(base, train, train_config,
                           settings.outputs_path() / variant.seed_name, val_dataset=val,
                           log=context.log.info, resume=True)
    return dg.MaterializeResult(
        metadata={
            "checkpoint": dg.MetadataValue.path(str(result.model_dir)),
            "checkpoint_sha256": result.unet_sha256,
            "final_loss": float(result.final_loss),
            "steps": result.steps, "epochs": result.epochs, "seed": result.seed,
            "train_pairs": len(train), "skipped": dg.MetadataValue.json(
                {k: len(v) for k, v in train.skipped.items()}),
            "loss_curve": dg.MetadataValue.md(image_md([result.loss_curve_png], "training loss")),
            "loss_values": dg.MetadataValue.json([round(float(x), 5) for x in result.loss_curve]),
            "validation_grid": dg.MetadataValue.md(
                image_md([result.validation_grid], "Input | GT | Output (val_filtered)"))
            if result.validation_grid else "none",
            "config": dg.MetadataValue.json(json.loads(json.dumps(
                {"variant": asdict(variant), "train": asdict(train_config),
                 "pretrained": base}, default=str))),
            "prompt_text": profile.prompt_text,
            "first_loss": float(result.loss_curve[0]) if result.loss_curve else float("nan"),
            **base_meta,
            "frame_cache_version": cache.version,
            "annotations_version": annotations.data_version or "",
            **progress_meta,
        },
        data_version=dg.DataVersion(result.unet_sha256),
    )
