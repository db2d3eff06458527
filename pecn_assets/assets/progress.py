"""PAC-Net assets: the progress-estimation network (per head) and its estimates at frame 20."""

import dagster as dg

from pecn_assets.configs import apply, trainer_config_class, used_values
from pecn_assets.gpu import gpu_asset_args
from pecn_assets.metadata import materialized, table_md
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings, Tracking
from pecn_assets.runs import run_dir, step_tags
from pecn_ml.artifacts import FilteredAnnotations, FrameCacheRef, PacNetCheckpoint, ProgressEstimates, Weights
from pecn_ml.models.pacnet import PacNetConfig, load_pacnet
from pecn_ml.profiles import Profile
from pecn_ml.progress_estimation import estimate_for_entries, mae_by_task
from pecn_ml.training.pacnet import train_pacnet
from pecn_ml.utils.files import sha256_file, write_json_atomic


def pacnet_model_config(profile: Profile, resnet: str, clip_text: str, head: str) -> PacNetConfig:
    """The model config of a profile: the small preset over the stand-ins (demo) or the seed's."""
    if profile.standins is not None:
        return PacNetConfig.tiny(resnet, clip_text, head=head)
    return PacNetConfig(resnet_name=resnet, clip_name=clip_text, head=head)


def val_entries(annotations: FilteredAnnotations) -> list[dict]:
    """Both evaluation sets (basic + backforth): PAC-Net's validation videos."""
    return annotations.eval_set("basic") + annotations.eval_set("backforth")


def estimate_rows(model, cache, annotations: FilteredAnnotations, input_idx: int, log) -> tuple[list, dict]:
    """PAC-Net's estimate at `input_idx` for every cached validation and training video, and MAE per task."""
    rows, by_task = [], {}
    for split, entries in (("val", val_entries(annotations)), ("train", annotations.train())):
        split_rows = estimate_for_entries(model, cache, [e for e in entries if e["id"] in cache],
                                          input_idx=input_idx, log=log)
        rows += [{**r, "split": split} for r in split_rows]
        by_task[split] = mae_by_task(split_rows)
    return rows, by_task


def build_progress_assets(parts: Partitions) -> list:
    """pacnet (one partition per head; hyper-parameters in the run config) and progress_estimates."""
    profile = parts.profile
    PacNetRunConfig = trainer_config_class(
        "PacNetRunConfig", profile.pacnet_train,
        doc=f"PAC-Net hyper-parameters (defaults: profile {profile.name}); the values used are recorded.")
    at_pacnet_resolution = dg.AssetIn(partition_mapping=parts.frame_cache_at(profile.pacnet_resolution))

    @dg.asset(group_name="progress", partitions_def=parts.head, kinds={"pytorch"}, code_version="2",
              ins={"frame_cache": at_pacnet_resolution}, **gpu_asset_args())
    def pacnet(context: dg.AssetExecutionContext, config: PacNetRunConfig, settings: PecnSettings,
               tracking: Tracking, filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef,
               resnet_base: Weights, clip_text_base: Weights) -> dg.MaterializeResult:
        """PAC-Net (ResNet frames + Transformer + CLIP text) trained with dynamic temporal cropping."""
        head, train_config = context.partition_key, apply(config, profile.pacnet_train)
        model_config = pacnet_model_config(profile, resnet_base.path, clip_text_base.path, head)
        out = run_dir(settings.outputs_path() / f"pacnet_{head}", context)
        result = train_pacnet(model_config, train_config, frame_cache.open(), filtered_annotations.train(),
                              val_entries(filtered_annotations), out, log=context.log.info, resume="auto",
                              tracking=tracking.for_run(f"pacnet_{head}", step_tags(context)))
        history = [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in result.history]
        return materialized(
            PacNetCheckpoint.from_result(result, head, out, context.run.run_id), result.weights_sha256,
            history=dg.MetadataValue.md(table_md(history)), train_config=used_values(train_config),
            model_config=used_values(model_config), frame_cache_version=frame_cache.version,
            **resnet_base.lineage(), **clip_text_base.lineage())

    @dg.asset(group_name="progress", kinds={"pytorch", "json"}, code_version="2", **gpu_asset_args(),
              ins={"frame_cache": at_pacnet_resolution,
                   "pacnet": dg.AssetIn(partition_mapping=dg.SpecificPartitionsPartitionMapping(["regression"]))})
    def progress_estimates(context: dg.AssetExecutionContext, settings: PecnSettings,
                           filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef,
                           pacnet: PacNetCheckpoint) -> dg.MaterializeResult:
        """PAC-Net's estimate at the input frame (20) for every validation and training video, beside the truth."""
        rows, by_task = estimate_rows(load_pacnet(pacnet.path), frame_cache.open(), filtered_annotations,
                                      profile.sampling.input_idx, context.log.info)
        path = write_json_atomic(run_dir(settings.outputs_path() / "progress_estimates", context) / "estimates.json",
                                 {"checkpoint": pacnet.path, "checkpoint_sha256": pacnet.sha256, "rows": rows})
        sha = sha256_file(path)
        estimates = ProgressEstimates(path=str(path), sha256=sha, pacnet_sha256=pacnet.sha256, n=len(rows),
                                      val_mae=by_task["val"].get("all", {}).get("mae", float("nan")),
                                      pacnet_run_id=pacnet.run_id)
        return materialized(estimates, sha, mae_by_task=by_task, pacnet_checkpoint=dg.MetadataValue.path(pacnet.path),
                            pacnet_run_id=dg.MetadataValue.dagster_run(pacnet.run_id))

    return [pacnet, progress_estimates]

