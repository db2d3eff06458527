"""Data assets: raw SSv2 sources, the filtered four-task annotations, the frame caches."""


import dagster as dg

from pecn_assets.metadata import image_md, table_md
from pecn_assets.partitions import resolution_partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.data.annotations import filter_annotations, load_filtered
from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache
from pecn_ml.data.versions import annotations_version, videos_version
from pecn_ml.utils.files import sha256_file
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

FILTERED_FILES = (TRAIN_FILE, *EVAL_SETS.values())


@dg.observable_source_asset(group_name="data", description="SSv2 annotation JSON files (labels, train, validation, test); data version = their sha256.")
def raw_annotations(settings: PecnSettings) -> dg.DataVersion:
    return dg.DataVersion(annotations_version(settings.annotations_path()))


@dg.observable_source_asset(group_name="data", description="SSv2 videos/{id}.webm; data version = sha256 over every file's sha256.")
def raw_videos(context, settings: PecnSettings) -> dg.DataVersion:
    return dg.DataVersion(videos_version(settings.data_path() / "videos", log=context.log.info))


@dg.asset(group_name="data", deps=[raw_annotations], kinds={"json"}, code_version="1")
def filtered_annotations(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
    """SSv2 filtered to the four tasks and sampled per task (train_filtered, val_filtered, val_filtered_backforth)."""
    config = settings.get_profile().filter
    result = filter_annotations(settings.data_path(), config, log=context.log.info)
    rows = [{"split": split, "task": task, "available": result.available[split].get(task, 0),
             "kept": n} for split, tasks in result.counts.items() for task, n in tasks.items()]
    paths = [settings.annotations_path() / name for name in FILTERED_FILES]
    version = "-".join(sha256_file(p)[:16] for p in paths)
    return dg.MaterializeResult(
        metadata={
            "counts": dg.MetadataValue.md(table_md(rows)),
            "rejected": dg.MetadataValue.json(dict(result.rejected)),
            "n_train": sum(result.counts["train"].values()),
            "n_val_basic": len(load_filtered(paths[1])),
            "n_val_backforth": len(load_filtered(paths[2])),
            "seed": config.seed,
            "files": dg.MetadataValue.json([str(p) for p in paths]),
        },
        data_version=dg.DataVersion(version),
    )


def filtered_video_ids(settings: PecnSettings) -> list[str]:
    """Every video id in the three filtered files, in file order, without repeats."""
    seen: dict[str, None] = {}
    for name in FILTERED_FILES:
        for entry in load_filtered(settings.annotations_path() / name):
            seen.setdefault(entry["id"], None)
    return list(seen)


def preview_indices(num_frames: int, middle: int = 20) -> list[int]:
    """Frames 0, `middle` and the last, of those the video has (a short one shows fewer)."""
    return sorted({0, min(middle, num_frames - 1), num_frames - 1})


@dg.asset(
    group_name="data", deps=[filtered_annotations, raw_videos], partitions_def=resolution_partitions,
    kinds={"numpy"}, code_version="1",
    automation_condition=dg.AutomationCondition.eager(),
    check_specs=[dg.AssetCheckSpec("all_videos_accounted_for", asset="frame_cache"),
                 dg.AssetCheckSpec("too_short_for_frame_25", asset="frame_cache")],
)
def frame_cache(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
    """All frames of every filtered video, resized to R x R (partition = R), with frame counts."""
    resolution = int(context.partition_key)
    ids = filtered_video_ids(settings)
    report = build_frame_cache(settings.data_path(), resolution, ids, log=context.log.info)
    cache = open_frame_cache(settings.data_path(), resolution)
    cached = set(cache.video_ids())
    failures = cache.failures()
    unaccounted = [v for v in ids if v not in cached and v not in failures]
    short = [v for v in ids if v in cached and cache.num_frames(v) <= 25]
    preview, caption = [], ""
    if cached:
        first = next(v for v in ids if v in cached)
        shown = preview_indices(cache.num_frames(first))
        preview = cache.export_pngs(first, cache.root / "_preview", indices=shown)
        caption = f"video {first}: frames {', '.join(map(str, shown))} of {cache.num_frames(first)}"
    failure_rows = [{"video_id": v, "reason": r} for v, r in sorted(failures.items())]
    return dg.MaterializeResult(
        metadata={
            "videos": len(ids), "decoded": report.decoded, "reused": report.reused,
            "failed": len(report.failed), "frames_written": report.frames_written,
            "seconds": round(report.seconds, 2),
            "frames_per_s": round(report.frames_written / report.seconds, 1) if report.seconds else 0.0,
            "failures": dg.MetadataValue.md(table_md(failure_rows) if failure_rows else "none"),
            "cache_dir": dg.MetadataValue.path(str(cache.root)),
            "preview": dg.MetadataValue.md(image_md(preview, caption)) if preview else "",
        },
        data_version=dg.DataVersion(cache.version),
        check_results=[
            dg.AssetCheckResult(
                check_name="all_videos_accounted_for", passed=not unaccounted,
                metadata={"unaccounted": len(unaccounted), "failed_with_reason": len(failures),
                          "examples": dg.MetadataValue.json(unaccounted[:20])}),
            dg.AssetCheckResult(
                check_name="too_short_for_frame_25", passed=len(short) < len(cached),
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"too_short": len(short), "examples": dg.MetadataValue.json(short[:20])},
                description="Videos with frame 25 missing (skipped by the next5 variants); fails only if none has it."),
        ],
    )
