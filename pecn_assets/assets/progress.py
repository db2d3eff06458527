"""PAC-Net assets: the progress-estimation network (per head) and its estimates at frame 20."""


import json

import dagster as dg

from pecn_assets.assets.data import filtered_annotations, frame_cache
from pecn_assets.assets.pretrained import base_weights, clip_text_base, resnet_base
from pecn_assets.gpu import gpu_asset_args
from pecn_assets.lineage import latest_upstream
from pecn_assets.metadata import table_md
from pecn_assets.partitions import PROFILE, from_resolution, head_partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.data.annotations import load_filtered
from pecn_ml.data.frame_cache import open_frame_cache
from pecn_ml.models.pacnet import PacNetConfig, load_pacnet
from pecn_ml.progress_estimation import estimate_for_entries, mae_by_task
from pecn_ml.training.pacnet import train_pacnet
from pecn_ml.utils.files import sha256_file, write_json_atomic
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

def pacnet_model_config(settings: PecnSettings, resnet: str, clip_text: str, head: str) -> PacNetConfig:
    """The model config of a profile: the small preset over the stand-ins (demo) or the seed's."""
    if settings.get_profile().standins is not None:
        return PacNetConfig.tiny(resnet, clip_text, head=head)
    return PacNetConfig(resnet_name=resnet, clip_name=clip_text, head=head)


def val_entries(settings: PecnSettings) -> list[dict]:
    """Both evaluation sets (basic + backforth): PAC-Net's validation videos."""
    return [e for name in EVAL_SETS.values() for e in load_filtered(settings.annotations_path() / name)]


@dg.asset(
    group_name="progress", partitions_def=head_partitions, kinds={"pytorch"}, code_version="1",
    **gpu_asset_args(),
    deps=[filtered_annotations, resnet_base, clip_text_base,
          dg.AssetDep(frame_cache, partition_mapping=from_resolution(PROFILE.pacnet_resolution))],
)
def pacnet(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
    """PAC-Net (ResNet frames + Transformer + CLIP text) trained with dynamic temporal cropping."""
    profile = settings.get_profile()
    head = context.partition_key
    cache = open_frame_cache(settings.data_path(), profile.pacnet_resolution)
    train = load_filtered(settings.annotations_path() / TRAIN_FILE)
    resnet, resnet_meta = base_weights(context, "resnet_base")
    clip_text, clip_meta = base_weights(context, "clip_text_base")
    model_config = pacnet_model_config(settings, resnet, clip_text, head)
    out_dir = settings.outputs_path() / f"pacnet_{head}"
    result = train_pacnet(model_config, profile.pacnet_train, cache, train, val_entries(settings),
                          out_dir, log=context.log.info, resume="auto")
    history = [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in result.history]
    return dg.MaterializeResult(
        metadata={
            "val_mae": float(result.val_mae),
            "baseline_mae": float(result.baseline_mae),
            "checkpoint": dg.MetadataValue.path(str(result.best_dir)),
            "checkpoint_sha256": result.weights_sha256,
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
            "history": dg.MetadataValue.md(table_md(history)),
            "config": dg.MetadataValue.json({"model": _jsonable(model_config),
                                             "train": _jsonable(profile.pacnet_train)}),
            "frame_cache_version": cache.version,
            **resnet_meta, **clip_meta,
        },
        data_version=dg.DataVersion(result.weights_sha256),
    )


@dg.asset(
    group_name="progress", kinds={"pytorch", "json"}, code_version="1", **gpu_asset_args(),
    deps=[filtered_annotations,
          dg.AssetDep(pacnet, partition_mapping=dg.SpecificPartitionsPartitionMapping(["regression"])),
          dg.AssetDep(frame_cache, partition_mapping=from_resolution(PROFILE.pacnet_resolution))],
)
def progress_estimates(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
    """PAC-Net's estimate at the input frame (20) for every validation and training video, beside the truth."""
    profile = settings.get_profile()
    up = latest_upstream(context.instance, "pacnet", "regression")
    checkpoint = up.metadata["checkpoint"]
    sha = sha256_file(f"{checkpoint}/model.safetensors")
    if sha != up.metadata["checkpoint_sha256"]:
        raise dg.Failure(f"{checkpoint} changed since pacnet was materialised (sha {sha[:12]} != "
                         f"{up.metadata['checkpoint_sha256'][:12]}): re-materialise pacnet")
    cache = open_frame_cache(settings.data_path(), profile.pacnet_resolution)
    cached = set(cache.video_ids())
    model = load_pacnet(checkpoint)
    splits = {"val": val_entries(settings), "train": load_filtered(settings.annotations_path() / TRAIN_FILE)}
    rows, by_task = [], {}
    for split, entries in splits.items():
        split_rows = estimate_for_entries(model, cache, [e for e in entries if e["id"] in cached],
                                          input_idx=profile.sampling.input_idx, log=context.log.info)
        rows += [{**r, "split": split} for r in split_rows]
        by_task[split] = mae_by_task(split_rows)
    path = write_json_atomic(settings.outputs_path() / "progress_estimates.json",
                             {"checkpoint": checkpoint, "checkpoint_sha256": sha, "rows": rows})
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(str(path)), "n": len(rows),
                  "mae_by_task": dg.MetadataValue.json(by_task),
                  "val_mae": by_task["val"].get("all", {}).get("mae", float("nan")),
                  "checkpoint_sha256": sha, **up.as_metadata("pacnet")},
        data_version=dg.DataVersion(sha256_file(path)),
    )


def _jsonable(config) -> dict:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config), default=str))
