"""InstructPix2Pix assets: the fine-tuned variants (target 21/25; no, true or shuffled progress), each
trained once per training seed (partition `{seed}|{variant}`)."""

from typing import Optional

import dagster as dg

from pecn_assets.automation import Automation, config_code_version
from pecn_assets.configs import (Pix2PixLaunchConfig, launch_options, trainer_config_class, training_settings,
                                 used_values)
from pecn_assets.gpu import claimed_gpus, gpu_asset_args, not_retried_when_hopeless
from pecn_assets.metadata import image_md, materialized
from pecn_assets.partitions import Partitions, seed_and_variant
from pecn_assets.pipes_child import Pix2PixJob
from pecn_assets.pipes_launch import child_result, run_training
from pecn_assets.resources import PecnSettings, Tracking
from pecn_assets.runs import run_dir, step_tags
from pecn_ml.artifacts import FilteredAnnotations, FrameCacheRef, ProgressEstimates, Weights
from pecn_ml.deployment import Deployment
from pecn_ml.model_cards import CardContext
from pecn_ml.variants import VARIANTS, Variant


def progress_source(use_estimator: bool, estimates: Optional[ProgressEstimates],
                    variant: Variant) -> tuple[Optional[dict], dict]:
    """PAC-Net's percent per video when a progress variant is asked to use it, and metadata naming
    the source of the prompts' percentages ("frame count", "PAC-Net" or "none"; a shuffled arm
    adds ", shuffled (seed S)": its prompts carry those percents deranged among the videos)."""
    if not variant.add_progress:
        return None, {"progress_source": "none"}
    shuffled = f", shuffled (seed {variant.shuffle_seed})" if variant.shuffled_progress else ""
    if not use_estimator:
        return None, {"progress_source": "frame count" + shuffled}
    if estimates is None:
        raise dg.Failure("use_progress_estimator is on, but progress_estimates has never been "
                         "materialised: materialise it first", allow_retries=False)
    lineage = estimates.lineage()
    return estimates.percent_by_video(), {**lineage, "progress_source": lineage["progress_source"] + shuffled}


def build_pix2pix_assets(parts: Partitions, train_processes: int = 1, automation: Automation = Automation(),
                         deployment: Deployment = Deployment()) -> list:
    """ip2p_model, one partition per training seed x variant; `train_processes`: the GPUs of a step's
    pod on Kubernetes."""
    profile = parts.profile
    Pix2PixRunConfig = trainer_config_class(
        "Pix2PixRunConfig", profile.pix2pix_train, exclude=("seed", "latent_cache_dir"), base=Pix2PixLaunchConfig,
        doc=f"InstructPix2Pix hyper-parameters (defaults: profile {profile.name}; the seed is the partition); "
            "the values used are recorded.")

    @dg.asset(group_name="pix2pix", partitions_def=parts.model, kinds={"pytorch"},
              code_version=config_code_version("2", profile.pix2pix_train), automation_condition=automation.retrain(),
              ins=parts.frame_cache_at(profile.pix2pix_resolution),
              **gpu_asset_args(train_processes, deployment))
    @not_retried_when_hopeless
    def ip2p_model(context: dg.AssetExecutionContext, config: Pix2PixRunConfig, settings: PecnSettings,
                   tracking: Tracking, filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef,
                   pix2pix_base: Weights, progress_estimates: Optional[ProgressEstimates]) -> dg.MaterializeResult:
        """InstructPix2Pix fine-tuned on the four-task training set, one variant (plain, progress or shuffled-progress control) and training seed per partition (trained in a launched process, K processes on K claimed GPUs)."""
        seed, variant = seed_and_variant(context.partition_key)
        train_config, k = training_settings(config, profile.pix2pix_train, settings, seed=seed, latent_cache_dir=(
            profile.pix2pix_train.latent_cache_dir or str(settings.outputs_path() / "latent_cache")))
        override, progress_meta = progress_source(config.use_progress_estimator, progress_estimates, VARIANTS[variant])
        out = run_dir(settings.outputs_path() / VARIANTS[variant].seed_name / f"seed_{seed}", context)
        versions = {"annotations": filtered_annotations.version, "frame_cache": frame_cache.version,
                    **({"progress_estimates": progress_estimates.sha256} if override is not None else {})}
        card = CardContext(run_id=context.run.run_id, bases=(pix2pix_base.card_base(),), data_versions=versions,
                           extra={"variant": variant, "prompt_form": VARIANTS[variant].prompt_form(profile.prompt_text),
                                  "prompt_text": profile.prompt_text, "progress_source": progress_meta["progress_source"],
                                  "profile": profile.name})
        job = Pix2PixJob(
            annotations=filtered_annotations, frame_cache=frame_cache, base=pix2pix_base, variant=variant, seed=seed,
            train_config=train_config, options=launch_options(settings, profile, out), run_id=context.run.run_id,
            prompt_text=profile.prompt_text, progress_estimates=override, progress_source=progress_meta["progress_source"],
            tracking=tracking.for_run(f"ip2p_model {context.partition_key}", step_tags(context)), card=card)
        with claimed_gpus(context, settings, k, profile) as claim:
            checkpoint, meta = child_result(run_training(context, "pix2pix", job, num_processes=k, claim=claim))
        curve, grid = meta.pop("loss_curve_png"), meta.pop("validation_grid_png")
        return materialized(
            checkpoint, checkpoint.sha256, **meta,
            loss_curve=dg.MetadataValue.md(image_md([curve], "training loss")),
            validation_grid=dg.MetadataValue.md(image_md([grid], "Input | GT | Output (val_filtered)") if grid else "none"),
            train_config=used_values(train_config), prompt_text=profile.prompt_text,
            frame_cache_version=frame_cache.version, annotations_version=filtered_annotations.version,
            **pix2pix_base.lineage(), **progress_meta)

    return [ip2p_model]
