"""PAC-Net assets: the progress-estimation network (per head) and its estimates at frame 20."""

from typing import Sequence

import dagster as dg

from pecn_assets.automation import Automation, config_code_version
from pecn_assets.configs import LaunchConfig, launch_options, trainer_config_class, training_settings, used_values
from pecn_assets.gpu import claimed_gpus, gpu_asset_args, not_retried_when_hopeless, torch_device
from pecn_assets.metadata import materialized, table_md
from pecn_assets.partitions import Partitions
from pecn_assets.pipes_child import PacNetJob
from pecn_assets.pipes_launch import child_result, run_training
from pecn_assets.resources import PecnSettings, Tracking
from pecn_assets.runs import run_dir, step_tags
from pecn_ml.artifacts import FilteredAnnotations, FrameCacheRef, PacNetCheckpoint, ProgressEstimates, Weights
from pecn_ml.deployment import Deployment
from pecn_ml.model_cards import CardContext
from pecn_ml.models.pacnet import PacNetConfig, load_pacnet
from pecn_ml.progress_estimation import estimate_for_entries, mae_by_task
from pecn_ml.utils.files import sha256_file, write_json_atomic


def estimate_rows(model, cache, annotations: FilteredAnnotations, input_idx: int, log,
                  batch_size: int = 16, selection_ids: Sequence[str] = ()) -> tuple[list, dict]:
    """PAC-Net's estimate at `input_idx` for every cached validation and training video, and MAE per
    task: "val" = the evaluation videos (PAC-Net's test set), "selection" = the training videos held
    out to pick its epoch (`selection_ids`), "train" = the rest of the training videos."""
    rows, by_task = [], {}
    held_out = set(selection_ids)
    train = annotations.train()
    splits = [("val", annotations.all_eval_sets()), ("train", [e for e in train if e["id"] not in held_out])]
    if held_out:
        splits.append(("selection", [e for e in train if e["id"] in held_out]))
    for split, entries in splits:
        split_rows = estimate_for_entries(model, cache, [e for e in entries if e["id"] in cache],
                                          input_idx=input_idx, log=log, batch_size=batch_size)
        rows += [{**r, "split": split} for r in split_rows]
        by_task[split] = mae_by_task(split_rows)
    return rows, by_task


def build_progress_assets(parts: Partitions, train_processes: int = 1, automation: Automation = Automation(),
                          deployment: Deployment = Deployment()) -> list:
    """pacnet (one partition per head) and progress_estimates (follows pacnet's regression head);
    `train_processes`: the GPUs of a pacnet step's pod on Kubernetes."""
    profile = parts.profile
    PacNetRunConfig = trainer_config_class(
        "PacNetRunConfig", profile.pacnet_train, base=LaunchConfig,
        doc=f"PAC-Net hyper-parameters (defaults: profile {profile.name}); the values used are recorded.")
    at_pacnet_resolution = parts.frame_cache_at(profile.pacnet_resolution)

    @dg.asset(group_name="progress", partitions_def=parts.head, kinds={"pytorch"},
              code_version=config_code_version("3", profile.pacnet_train), automation_condition=automation.retrain(),
              ins=at_pacnet_resolution, **gpu_asset_args(train_processes, deployment))
    @not_retried_when_hopeless
    def pacnet(context: dg.AssetExecutionContext, config: PacNetRunConfig, settings: PecnSettings,
               tracking: Tracking, filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef,
               resnet_base: Weights, clip_text_base: Weights) -> dg.MaterializeResult:
        """PAC-Net (ResNet frames + Transformer + CLIP text) trained with dynamic temporal cropping, its epoch picked on a selection split of the training videos, scored on the evaluation videos (in a launched process, K processes on K claimed GPUs)."""
        train_config, k = training_settings(config, profile.pacnet_train, settings)
        head = context.partition_key
        resnet, clip = resnet_base.path, clip_text_base.path   # the demo's stand-ins get the small preset
        model_config = (PacNetConfig.tiny(resnet, clip, head=head) if profile.standins is not None
                        else PacNetConfig(resnet_name=resnet, clip_name=clip, head=head))
        out = run_dir(settings.outputs_path() / f"pacnet_{head}", context)
        card = CardContext(run_id=context.run.run_id, bases=(resnet_base.card_base(), clip_text_base.card_base()),
                           data_versions={"annotations": filtered_annotations.version, "frame_cache": frame_cache.version},
                           extra={"profile": profile.name})
        job = PacNetJob(annotations=filtered_annotations, frame_cache=frame_cache, model_config=model_config,
                        train_config=train_config, options=launch_options(settings, profile, out, resume="auto"),
                        run_id=context.run.run_id, tracking=tracking.for_run(f"pacnet_{head}", step_tags(context)),
                        card=card)
        with claimed_gpus(context, settings, k, profile) as claim:
            checkpoint, meta = child_result(run_training(context, "pacnet", job, num_processes=k, claim=claim))
        history = meta.pop("history")
        return materialized(
            checkpoint, checkpoint.sha256, **meta, history=dg.MetadataValue.md(table_md(history)),
            train_loss_values=[h["train_loss"] for h in history],
            train_config=used_values(train_config), model_config=used_values(model_config),
            frame_cache_version=frame_cache.version, **resnet_base.lineage(), **clip_text_base.lineage())

    @dg.asset(group_name="progress", kinds={"pytorch", "json"}, code_version="3", **gpu_asset_args(1, deployment),
              automation_condition=automation.follow("pacnet"),
              ins={**at_pacnet_resolution,
                   "pacnet": dg.AssetIn(partition_mapping=dg.SpecificPartitionsPartitionMapping(["regression"]))})
    @not_retried_when_hopeless
    def progress_estimates(context: dg.AssetExecutionContext, settings: PecnSettings,
                           filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef,
                           pacnet: PacNetCheckpoint) -> dg.MaterializeResult:
        """PAC-Net's estimate at the input frame (20) for every validation, selection and training video, beside the truth."""
        with claimed_gpus(context, settings, 1, profile) as claim:
            device = torch_device(claim)
            rows, by_task = estimate_rows(load_pacnet(pacnet.path, device), frame_cache.open(),
                                          filtered_annotations, profile.sampling.input_idx, context.log.info,
                                          batch_size=profile.pacnet_train.batch_size * 4,
                                          selection_ids=pacnet.selection_ids())
        path = write_json_atomic(run_dir(settings.outputs_path() / "progress_estimates", context) / "estimates.json",
                                 {"checkpoint": pacnet.path, "checkpoint_sha256": pacnet.sha256, "rows": rows})
        sha = sha256_file(path)
        estimates = ProgressEstimates(path=str(path), sha256=sha, pacnet_sha256=pacnet.sha256, n=len(rows),
                                      val_mae=by_task["val"].get("all", {}).get("mae", float("nan")),
                                      pacnet_run_id=pacnet.run_id)
        return materialized(estimates, sha, mae_by_task=by_task, pacnet_checkpoint=dg.MetadataValue.path(pacnet.path),
                            **claim.metadata(), device=device,
                            pacnet_run_id=dg.MetadataValue.dagster_run(pacnet.run_id))

    return [pacnet, progress_estimates]

