"""Jobs and sensors, and the executor every job runs on.

- `pecn_automation` (automation sensor, running unless `PECN_AUTOMATION=off`): evaluates the
  assets' `automation_condition`s (pecn_assets/automation.py): at the weekly tick (`PECN_SWEEP_CRON`)
  it trains the `ip2p_model` / `pacnet` partitions that are missing or stale, each `evaluation`
  follows its model, `frame_cache` is eager. It replaced the `experiment_sweep` schedule (retrained
  every seed x variant weekly, changed or not), the `sweep_evaluations` sensor and the hourly
  `refresh_frame_cache` schedule (staleness computed by hand).
- `register_seeds` (sensor, running): adds the deployment's training seeds (`PECN_SEEDS` or the
  profile's) to the dynamic seed partitions once each (a cursor remembers them, so a seed deleted
  in the UI stays deleted); more seeds are added in the UI, without a restart.
- `annotations_changed` (sensor, stopped): the raw annotation files hash to a new version:
  observe `raw_annotations`, re-materialise `filtered_annotations`. Kept: automation can watch a
  source only by launching an observation run on every tick; this sensor hashes the files in
  the daemon and launches a run only when they changed.
- `release_dead_runs` (sensor, running, every 30 s): fails the runs of this machine whose
  processes are all gone (killed) and frees their pool slots, which would block every later GPU
  step; logs what it released (pecn_assets/runs.py). Kept: not a materialisation decision.
- `gpu_pool_size` (sensor, running; built in `pecn_assets.definitions` from `pecn_assets/gpu_pool.py`):
  keeps the `gpu` pool's limit at claimable devices // training processes per step.
- `cleanup_checkpoints` (job): deletes training-run folders that no materialisation of any asset
  refers to; a dry run unless its config says `dry_run: false` (pecn_assets/cleanup.py).
- `sweep_train`, `sweep_evaluate`, `build_frame_cache`, ... (jobs): for runs and backfills by hand.

`PECN_EXECUTOR` picks the executor: `multiprocess` (default; `in_process` via run config),
`in_process`, or `k8s` (`dagster_k8s.k8s_job_executor`: each step in its own pod, see deploy/).
The environment is read when `build_jobs` runs (from `pecn_assets.definitions`), not at import.
"""

import json
import os
from typing import Optional

import dagster as dg

from pecn_assets.cleanup import cleanup_checkpoints_job
from pecn_assets.partitions import SEED_PARTITIONS
from pecn_assets.resources import PecnSettings
from pecn_assets.runs import release_dead_runs
from pecn_ml.data.versions import annotations_version

EXECUTOR_ENV = "PECN_EXECUTOR"
AUTOMATION_ENV = "PECN_AUTOMATION"

ANNOTATIONS_VERSION_TAG = "pecn/annotations_version"
DATA_VERSION_TAG = "dagster/data_version"

RAW_ANNOTATIONS = dg.AssetKey("raw_annotations")


def pecn_executor() -> dg.ExecutorDefinition:
    """The executor named by `PECN_EXECUTOR` (multiprocess, in_process or k8s)."""
    choice = os.environ.get(EXECUTOR_ENV, "").strip().lower()
    if choice in ("", "multiprocess"):
        return dg.multi_or_in_process_executor
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"{EXECUTOR_ENV}={choice!r}: expected one of multiprocess, in_process, k8s")


def _job(name: str, keys: list[str], description: str, executor: dg.ExecutorDefinition):
    return dg.define_asset_job(name, selection=dg.AssetSelection.keys(*keys), description=description,
                               executor_def=executor)


def current_data_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> Optional[str]:
    """The data version of the latest materialisation or observation of `key` (None if none)."""
    latest = None
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        records = fetch(key, limit=1).records
        if records and (latest is None or records[0].storage_id > latest.storage_id):
            latest = records[0]
    if latest is None:
        return None
    event = latest.asset_materialization or latest.asset_observation
    return event.tags.get(DATA_VERSION_TAG) if event is not None else None


# ---------------------------------------------------------------------------------------------
# Raw annotations changed: observe them and filter again.
# ---------------------------------------------------------------------------------------------

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
    last = context.cursor or current_data_version(context.instance, RAW_ANNOTATIONS)
    if version == last:
        return dg.SensorResult(skip_reason=f"annotations unchanged (version {version[:12]})", cursor=version)
    context.log.info(f"annotations in {ann_dir} changed: {str(last)[:12]} -> {version[:12]}")
    return dg.SensorResult(run_requests=[dg.RunRequest(tags={ANNOTATIONS_VERSION_TAG: version[:16]})],
                           cursor=version)


# ---------------------------------------------------------------------------------------------
# Declarative automation (conditions: pecn_assets/automation.py) and the lists definitions.py imports.
# ---------------------------------------------------------------------------------------------

def _automation_status() -> dg.DefaultSensorStatus:
    off = os.environ.get(AUTOMATION_ENV, "on").strip().lower() in ("off", "0", "false", "no")
    return dg.DefaultSensorStatus.STOPPED if off else dg.DefaultSensorStatus.RUNNING


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """`pecn_automation`: the one sensor that evaluates every asset's automation condition. Running by
    default (the weekly backfill and evaluations following their models need it); `PECN_AUTOMATION=off`
    starts it stopped, e.g. on a machine that shares the instance but must not launch training."""
    return dg.AutomationConditionSensorDefinition(
        "pecn_automation", target=dg.AssetSelection.all(), default_status=_automation_status(),
        minimum_interval_seconds=60,
        emit_backfills=True,  # (the default) a tick's requests: one asset backfill, each evaluation after its model
        description="Evaluates the assets' automation conditions: at the weekly tick (PECN_SWEEP_CRON) "
                    "ip2p_model and pacnet partitions missing or stale (an upstream's data version or the "
                    "code version / training config changed); evaluation and progress_estimates follow "
                    "their model; frame_cache eager. PECN_AUTOMATION=off starts it stopped.")


@dg.sensor(name="release_dead_runs", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Fails the runs of this machine whose processes are all gone (killed, crashed) and frees "
                       "their pool slots, which would otherwise block every later GPU step; the default run "
                       "launcher gives Dagster's run monitoring no way to see a dead run worker.")
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


def build_jobs(seeds: tuple[int, ...]) -> tuple[list, list]:
    """(jobs, sensors) of one deployment (training `seeds` to register), with the executor `PECN_EXECUTOR` names."""
    executor = pecn_executor()
    jobs = [
        _job("observe_sources", ["raw_annotations", "raw_videos"],
             "Observe the raw SSv2 annotations and videos (data versions from file hashes).", executor),
        _job("refilter_annotations", ["raw_annotations", "filtered_annotations"],
             "Observe the raw annotations, then filter them to the four tasks again.", executor),
        _job("build_frame_cache", ["frame_cache"], "Build one resolution of the frame cache (partition = R).",
             executor),
        _job("sweep_train", ["ip2p_model"],
             "Fine-tune one InstructPix2Pix variant with one training seed (partition = seed|variant).", executor),
        _job("sweep_evaluate", ["evaluation"],
             "Evaluate one trained model on every eval set (partition = seed|variant).", executor),
        cleanup_checkpoints_job,
    ]
    return jobs, [build_seed_sensor(seeds), annotations_changed, build_automation_sensor(), release_dead_runs_sensor]
