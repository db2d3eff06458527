"""Jobs, sensors and the executor every job runs on.

Sensors: `pecn_automation` (evaluates the assets' automation conditions, pecn_assets/automation.py),
`register_seeds` (the deployment's training seeds into the dynamic partitions, once each),
`annotations_changed` (stopped: re-filters when the raw annotation files hash differently),
`release_dead_runs` (fails runs whose processes are gone and frees their pool slots), and
`gpu_pool_size` (pecn_assets/gpu_pool.py). Jobs: runs and backfills by hand, and cleanup.
"""

import json

import dagster as dg

from pecn_assets.cleanup import DATA_VERSION_TAG, cleanup_checkpoints_job
from pecn_assets.partitions import SEED_PARTITIONS
from pecn_assets.resources import PecnSettings
from pecn_assets.runs import release_dead_runs
from pecn_ml.data.versions import annotations_version

ANNOTATIONS_VERSION_TAG = "pecn/annotations_version"

RAW_ANNOTATIONS = dg.AssetKey("raw_annotations")
JOBS = {  # name: (asset keys, description); runs and backfills by hand
    "observe_sources": (("raw_annotations", "raw_videos"),
                        "Observe the raw SSv2 annotations and videos (data versions from file hashes)."),
    "refilter_annotations": (("raw_annotations", "filtered_annotations"),
                             "Observe the raw annotations, then filter them to the four tasks again."),
    "build_frame_cache": (("frame_cache",), "Build one resolution of the frame cache (partition = R)."),
    "sweep_train": (("ip2p_model",),
                    "Fine-tune one InstructPix2Pix variant with one training seed (partition = seed|variant)."),
    "sweep_evaluate": (("evaluation",), "Evaluate one trained model on every eval set (partition = seed|variant)."),
}


def pecn_executor(name: str = "multiprocess") -> dg.ExecutorDefinition:
    """The executor `name` (the deployment's `executor`: multiprocess, in_process or k8s)."""
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    executors = {"multiprocess": dg.multi_or_in_process_executor, "in_process": dg.in_process_executor}
    if name not in executors:
        raise ValueError(f"PECN_EXECUTOR={name!r}: expected one of multiprocess, in_process, k8s")
    return executors[name]


@dg.sensor(job_name="refilter_annotations", name="annotations_changed", minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Hashes the SSv2 annotation files; when their version differs from the last "
                       "one seen (cursor), observes raw_annotations and re-materialises "
                       "filtered_annotations.")
def annotations_changed(context: dg.SensorEvaluationContext, settings: PecnSettings) -> dg.SensorResult:
    ann_dir = settings.annotations_path()
    try:
        version = annotations_version(ann_dir)
    except (OSError, ValueError) as e:
        return dg.SensorResult(skip_reason=f"cannot read the annotations in {ann_dir}: {e}",
                               cursor=context.cursor)
    seen = context.instance.get_latest_data_version_record(RAW_ANNOTATIONS, is_source=True)  # last observation
    last = context.cursor or (seen.asset_observation.tags.get(DATA_VERSION_TAG) if seen else None)
    if version == last:
        return dg.SensorResult(skip_reason=f"annotations unchanged (version {version[:12]})", cursor=version)
    context.log.info(f"annotations in {ann_dir} changed: {str(last)[:12]} -> {version[:12]}")
    return dg.SensorResult(run_requests=[dg.RunRequest(tags={ANNOTATIONS_VERSION_TAG: version[:16]})],
                           cursor=version)


def build_automation_sensor(running: bool = True) -> dg.AutomationConditionSensorDefinition:
    """`pecn_automation`: the one sensor that evaluates every asset's automation condition; `running`
    False (the deployment's `automation` off) starts it stopped, e.g. on a machine that must not train."""
    return dg.AutomationConditionSensorDefinition(
        "pecn_automation", target=dg.AssetSelection.all(), minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        emit_backfills=True,  # (the default) a tick's requests: one asset backfill, each evaluation after its model
        description="Evaluates the assets' automation conditions: at the weekly tick (PECN_SWEEP_CRON) "
                    "ip2p_model and pacnet partitions missing or stale (an upstream's data version or the "
                    "code version / training config changed); evaluation and progress_estimates follow "
                    "their model; frame_cache eager. PECN_AUTOMATION=off starts it stopped.")


@dg.sensor(name="release_dead_runs", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Fails the runs of this machine whose processes are all gone (killed, crashed) and frees "
                       "their pool slots, which would otherwise block every later GPU step.")
def release_dead_runs_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    released = release_dead_runs(context.instance, log=context.log.info)
    return dg.SkipReason(f"released {len(released)} dead run(s): {', '.join(released)}" if released
                         else "no dead runs")


def build_seed_sensor(seeds: tuple[int, ...]) -> dg.SensorDefinition:
    """`register_seeds`: the deployment's training seeds into the dynamic seed partitions, once each."""

    @dg.sensor(name="register_seeds", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Adds the deployment's training seeds (PECN_SEEDS or the profile's) to the dynamic "
                           "seed partitions of ip2p_model / evaluation, each once (cursor), so a seed deleted in "
                           "the UI stays deleted. More seeds: ip2p_model -> Materialize... -> Add a partition (docs/UI.md).")
    def register_seeds(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        done = set(json.loads(context.cursor)) if context.cursor else set()
        wanted = [str(s) for s in seeds if str(s) not in done]
        new = [s for s in wanted if not context.instance.has_dynamic_partition(SEED_PARTITIONS, s)]
        cursor = json.dumps(sorted(done | set(wanted), key=int))
        if not new:
            return dg.SensorResult(skip_reason=f"training seeds {', '.join(map(str, seeds))} registered",
                                   cursor=cursor)
        context.log.info(f"adding training seeds {', '.join(new)} to the {SEED_PARTITIONS} partitions")
        request = dg.AddDynamicPartitionsRequest(partitions_def_name=SEED_PARTITIONS, partition_keys=new)
        return dg.SensorResult(dynamic_partitions_requests=[request], cursor=cursor)

    return register_seeds


def build_jobs(seeds: tuple[int, ...], executor: dg.ExecutorDefinition = dg.multi_or_in_process_executor,
               automation: bool = True) -> tuple[list, list]:
    """(jobs, sensors) of one deployment: training `seeds` to register, the `executor`, and whether
    the automation sensor starts running."""
    jobs = [dg.define_asset_job(name, selection=dg.AssetSelection.keys(*keys), description=text,
                                executor_def=executor) for name, (keys, text) in JOBS.items()]
    sensors = [build_seed_sensor(seeds), annotations_changed, build_automation_sensor(automation),
               release_dead_runs_sensor]
    return [*jobs, cleanup_checkpoints_job], sensors
