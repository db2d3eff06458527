"""Data assets: raw SSv2 sources, the filtered four-task annotations, the frame caches."""

import dagster as dg

from pecn_assets.automation import Automation
from pecn_assets.metadata import image_md, materialized, table_md
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.artifacts import FilteredAnnotations, FrameCacheRef
from pecn_ml.data.annotations import filter_annotations
from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache
from pecn_ml.data.versions import annotations_version, videos_version
from pecn_ml.utils.files import sha256_file
from pecn_ml.utils.usage import bytes_on_disk
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

FILTERED_FILES = (TRAIN_FILE, *EVAL_SETS.values())


@dg.observable_source_asset(group_name="data", description="SSv2 annotation JSON files (labels, train, validation, test); data version = their sha256.")
def raw_annotations(settings: PecnSettings) -> dg.DataVersion:
    return dg.DataVersion(annotations_version(settings.annotations_path()))


@dg.observable_source_asset(group_name="data", description="SSv2 videos/{id}.webm; data version = sha256 over every file's sha256.")
def raw_videos(context, settings: PecnSettings) -> dg.DataVersion:
    return dg.DataVersion(videos_version(settings.data_path() / "videos", log=context.log.info))


def filtered_artifact(settings: PecnSettings) -> FilteredAnnotations:
    """The three filtered files as an artifact (sha256 of each, one version over all)."""
    ann = settings.annotations_path()
    files = {name: sha256_file(ann / name) for name in FILTERED_FILES}
    return FilteredAnnotations(annotations_dir=str(ann), files=files,
                               version="-".join(sha[:16] for sha in files.values()))


def preview_indices(num_frames: int, middle: int = 20) -> list[int]:
    """Frames 0, `middle` and the last, of those the video has (a short one shows fewer)."""
    return sorted({0, min(middle, num_frames - 1), num_frames - 1})


def cache_preview(cache, ids: list[str]) -> str:
    """Markdown with frames of the first cached video (only frames it has), or ""."""
    first = next((v for v in ids if v in cache), None)
    if first is None:
        return ""
    shown = preview_indices(cache.num_frames(first))
    pngs = cache.export_pngs(first, cache.root / "_preview", indices=shown)
    return image_md(pngs, f"video {first}: frames {', '.join(map(str, shown))} of {cache.num_frames(first)}")


def cache_checks(cache, ids: list[str]) -> list[dg.AssetCheckResult]:
    """Every video cached or failed with a reason; frame 25 present in at least one video."""
    cached, failures = set(cache.video_ids()), cache.failures()
    unaccounted = [v for v in ids if v not in cached and v not in failures]
    short = [v for v in ids if v in cached and cache.num_frames(v) <= 25]
    return [
        dg.AssetCheckResult(check_name="all_videos_accounted_for", passed=not unaccounted,
                            metadata={"unaccounted": len(unaccounted), "failed_with_reason": len(failures),
                                      "examples": dg.MetadataValue.json(unaccounted[:20])}),
        dg.AssetCheckResult(check_name="too_short_for_frame_25", passed=len(short) < len(cached),
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"too_short": len(short), "examples": dg.MetadataValue.json(short[:20])},
                            description="Videos with frame 25 missing (skipped by the next5 variants); "
                                        "fails only if none has it."),
    ]


def build_data_assets(parts: Partitions, automation: Automation = Automation()) -> list:
    """filtered_annotations (the profile's filter) and frame_cache (the profile's resolutions; eager)."""

    @dg.asset(group_name="data", deps=[raw_annotations], kinds={"json"}, code_version="2")
    def filtered_annotations(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
        """SSv2 filtered to the four tasks and sampled per task (train_filtered, val_filtered, val_filtered_backforth)."""
        result = filter_annotations(settings.data_path(), parts.profile.filter, log=context.log.info)
        rows = [{"split": split, "task": task, "available": result.available[split].get(task, 0), "kept": n}
                for split, tasks in result.counts.items() for task, n in tasks.items()]
        artifact = filtered_artifact(settings)
        return materialized(
            artifact, artifact.version, counts=dg.MetadataValue.md(table_md(rows)),
            rejected=dict(result.rejected), seed=parts.profile.filter.seed,
            n_train=len(artifact.train()), n_val_basic=len(artifact.eval_set("basic")),
            n_val_backforth=len(artifact.eval_set("backforth")))

    @dg.asset(
        group_name="data", deps=[raw_videos], partitions_def=parts.resolution, kinds={"numpy"},
        code_version="2", automation_condition=automation.cache(),
        check_specs=[dg.AssetCheckSpec("all_videos_accounted_for", asset="frame_cache"),
                     dg.AssetCheckSpec("too_short_for_frame_25", asset="frame_cache")],
    )
    def frame_cache(context: dg.AssetExecutionContext, settings: PecnSettings,
                    filtered_annotations: FilteredAnnotations):
        """All frames of every filtered video, resized to R x R (partition = R), with frame counts."""
        # (-> MaterializeResult would type the output Nothing; the value is a FrameCacheRef)
        resolution = int(context.partition_key)
        ids = filtered_annotations.video_ids()
        report = build_frame_cache(settings.data_path(), resolution, ids, log=context.log.info)
        cache = open_frame_cache(settings.data_path(), resolution)
        failures = [{"video_id": v, "reason": r} for v, r in sorted(cache.failures().items())]
        preview = cache_preview(cache, ids)
        return materialized(
            FrameCacheRef(str(settings.data_path()), resolution, cache.version), cache.version,
            videos=len(ids), decoded=report.decoded, reused=report.reused, failed=len(report.failed),
            frames_written=report.frames_written, seconds=round(report.seconds, 2),
            frames_per_s=round(report.frames_written / report.seconds, 1) if report.seconds else 0.0,
            failures=dg.MetadataValue.md(table_md(failures) if failures else "none"),
            cache_dir=dg.MetadataValue.path(str(cache.root)), preview=dg.MetadataValue.md(preview or "none"),
            bytes_on_disk=bytes_on_disk(cache.root),
            check_results=cache_checks(cache, ids))

    return [filtered_annotations, frame_cache]
