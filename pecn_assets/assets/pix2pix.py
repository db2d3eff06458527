"""InstructPix2Pix assets: the four fine-tuned variants (target 21/25, with/without progress), each
trained once per training seed (partition `{seed}|{variant}`)."""

from typing import Optional

import dagster as dg

from pecn_assets.configs import ProgressSourceConfig, apply, trainer_config_class, used_values
from pecn_assets.gpu import gpu_asset_args
from pecn_assets.metadata import image_md, materialized
from pecn_assets.partitions import Partitions, seed_and_variant
from pecn_assets.resources import PecnSettings, Tracking
from pecn_assets.runs import run_dir, step_tags
from pecn_ml.artifacts import FilteredAnnotations, FrameCacheRef, Pix2PixCheckpoint, ProgressEstimates, Weights
from pecn_ml.data.pairs import FramePairDataset
from pecn_ml.training.pix2pix import train_pix2pix
from pecn_ml.variants import VARIANTS, Variant


def progress_source(use_estimator: bool, estimates: Optional[ProgressEstimates],
                    variant: Variant) -> tuple[Optional[dict], dict]:
    """PAC-Net's percent per video when a progress variant is asked to use it, and metadata naming
    the source of the prompts' percentages ("frame count", "PAC-Net" or "none")."""
    if not variant.add_progress:
        return None, {"progress_source": "none"}
    if not use_estimator:
        return None, {"progress_source": "frame count"}
    if estimates is None:
        raise dg.Failure("use_progress_estimator is on, but progress_estimates has never been "
                         "materialised: materialise it first", allow_retries=False)
    return estimates.percent_by_video(), estimates.lineage()


def pairs(cache, entries: list[dict], variant: Variant, prompt_text: str, override: Optional[dict]) -> FramePairDataset:
    return FramePairDataset(cache, entries, input_idx=variant.input_idx, target_idx=variant.target_idx,
                            add_progress=variant.add_progress, progress_estimates=override,
                            prompt_text=prompt_text)


def build_pix2pix_assets(parts: Partitions) -> list:
    """ip2p_model: one partition per training seed x variant; hyper-parameters in the run config."""
    profile = parts.profile
    Pix2PixRunConfig = trainer_config_class(
        "Pix2PixRunConfig", profile.pix2pix_train, exclude=("seed", "latent_cache_dir"), base=ProgressSourceConfig,
        doc=f"InstructPix2Pix hyper-parameters (defaults: profile {profile.name}; the seed is the partition); "
            "the values used are recorded.")

    @dg.asset(group_name="pix2pix", partitions_def=parts.model, kinds={"pytorch"}, code_version="2",
              ins={"frame_cache": dg.AssetIn(partition_mapping=parts.frame_cache_at(profile.pix2pix_resolution))},
              **gpu_asset_args())
    def ip2p_model(context: dg.AssetExecutionContext, config: Pix2PixRunConfig, settings: PecnSettings,
                   tracking: Tracking, filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef,
                   pix2pix_base: Weights, progress_estimates: Optional[ProgressEstimates]) -> dg.MaterializeResult:
        """InstructPix2Pix fine-tuned on the four-task training set, one variant and training seed per partition."""
        seed, variant = seed_and_variant(context.partition_key)
        override, progress_meta = progress_source(config.use_progress_estimator, progress_estimates, VARIANTS[variant])
        cache = frame_cache.open()
        train, val = (pairs(cache, entries, VARIANTS[variant], profile.prompt_text, override)
                      for entries in (filtered_annotations.train(), filtered_annotations.eval_set("basic")))
        train_config = apply(config, profile.pix2pix_train, seed=seed, latent_cache_dir=(
            profile.pix2pix_train.latent_cache_dir or str(settings.outputs_path() / "latent_cache")))
        out = run_dir(settings.outputs_path() / VARIANTS[variant].seed_name / f"seed_{seed}", context)
        result = train_pix2pix(pix2pix_base.path, train, train_config, out, val_dataset=val, log=context.log.info,
                               resume=True, tracking=tracking.for_run(f"ip2p_model {context.partition_key}",
                                                                      step_tags(context)))
        return materialized(
            Pix2PixCheckpoint.from_result(result, variant, seed, out, context.run.run_id, pix2pix_base.sha256,
                                          progress_meta["progress_source"]), result.unet_sha256,
            train_pairs=len(train), skipped={k: len(v) for k, v in train.skipped.items()},
            loss_curve=dg.MetadataValue.md(image_md([result.loss_curve_png], "training loss")),
            loss_values=[round(float(x), 5) for x in result.loss_curve],
            validation_grid=dg.MetadataValue.md(image_md([result.validation_grid], "Input | GT | Output (val_filtered)")
                                                if result.validation_grid else "none"),
            train_config=used_values(train_config), prompt_text=profile.prompt_text,
            frame_cache_version=frame_cache.version, annotations_version=filtered_annotations.version,
            **pix2pix_base.lineage(), **progress_meta)

    return [ip2p_model]
