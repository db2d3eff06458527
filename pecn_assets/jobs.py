"""Jobs, schedules and sensors, and the executor every job runs on.

- `experiment_sweep` (schedule, cron `PECN_SWEEP_CRON`, default weekly; starts stopped): one
  `ip2p_model` run per training seed x variant, tagged `pecn/sweep`.
- `sweep_evaluations` (sensor, running): when a `pecn/sweep` run materialises
  `ip2p_model/<seed>|<variant>`, requests `evaluation` of the same partition (every eval set).
- `refresh_frame_cache` (schedule, cron `PECN_FRAME_CACHE_CRON`, default hourly; stopped):
  `frame_cache` partitions never built or whose upstream data version or code version changed.
- `annotations_changed` (sensor, stopped): the raw annotation files hash to a new version:
  observe `raw_annotations`, re-materialise `filtered_annotations`.
- `pecn_automation` (automation sensor, running unless `PECN_AUTOMATION=off`): evaluates the
  assets' `automation_condition`s (frame_cache: eager).
- `release_dead_runs` (sensor, running, every 30 s): fails the runs of this machine whose
  processes are all gone (killed) and frees their pool slots, which would block every later GPU
  step; logs what it released (pecn_assets/runs.py).
- `gpu_pool_size` (sensor, running; built in `pecn_assets.definitions` from `pecn_assets/gpu_pool.py`):
  keeps the `gpu` pool's limit at claimable devices // training processes per step.
- `cleanup_checkpoints` (job): deletes training-run folders that no materialisation of any asset
  refers to; a dry run unless its config says `dry_run: false` (pecn_assets/cleanup.py).

The sweep is two steps because an `evaluation` partition reads the `ip2p_model` checkpoint of its
variant: evaluations are requested only once that checkpoint has been materialised. (In Dagster
1.13 a schedule cannot launch an asset backfill; only sensors can, through a private constructor.)

`PECN_EXECUTOR` picks the executor: `multiprocess` (default; `in_process` via run config),
`in_process`, or `k8s` (`dagster_k8s.k8s_job_executor`: each step in its own pod, see deploy/).
The environment is read when `build_jobs` runs (from `pecn_assets.definitions`), not at import.
"""

import hashlib
import json
import os
from datetime import timezone
from typing import Optional

import dagster as dg

from pecn_assets.cleanup import cleanup_checkpoints_job
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings
from pecn_assets.runs import release_dead_runs
from pecn_ml.data.versions import annotations_version

EXECUTOR_ENV = "PECN_EXECUTOR"
SWEEP_CRON_ENV = "PECN_SWEEP_CRON"
DEFAULT_SWEEP_CRON = "0 3 * * 6"            # Saturdays 03:00 UTC
FRAME_CACHE_CRON_ENV = "PECN_FRAME_CACHE_CRON"
DEFAULT_FRAME_CACHE_CRON = "0 * * * *"      # hourly; a tick only queries the instance
AUTOMATION_ENV = "PECN_AUTOMATION"

SWEEP_TAG = "pecn/sweep"
FRAME_CACHE_STATE_TAG = "pecn/frame_cache_state"
FRAME_CACHE_REASON_TAG = "pecn/frame_cache_reason"
ANNOTATIONS_VERSION_TAG = "pecn/annotations_version"
DATA_VERSION_TAG = "dagster/data_version"
INPUT_DATA_VERSION_PREFIX = "dagster/input_data_version/"
CODE_VERSION_TAG = "dagster/code_version"
PARTITION_TAG = "dagster/partition"

IP2P_MODEL = dg.AssetKey("ip2p_model")
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


def _cron(env: str, default: str) -> str:
    """The cron string in `env` (default when unset), checked so a typo fails at load time."""
    cron = os.environ.get(env, "").strip() or default
    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError as e:
        raise ValueError(f"{env}={cron!r} is not a valid cron schedule: {e}") from None
    return cron


# ---------------------------------------------------------------------------------------------
# The experiment sweep: train every variant (schedule), then evaluate each trained one (sensor).
# ---------------------------------------------------------------------------------------------

def build_sweep_schedule(parts: Partitions, sweep_train_job) -> dg.ScheduleDefinition:
    """The `experiment_sweep` schedule at the cron in `PECN_SWEEP_CRON` (default weekly)."""

    @dg.schedule(cron_schedule=_cron(SWEEP_CRON_ENV, DEFAULT_SWEEP_CRON), job=sweep_train_job,
                 name="experiment_sweep", execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.STOPPED,
                 description="Retrain ip2p_model for every training seed and variant; sweep_evaluations "
                             "then evaluates each one on both eval sets. Cron: PECN_SWEEP_CRON.")
    def experiment_sweep(context: dg.ScheduleEvaluationContext):
        when = context.scheduled_execution_time  # set by the daemon and by the UI's "test schedule"
        sweep_id = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")
        for key in parts.model_keys():
            yield dg.RunRequest(run_key=f"{sweep_id}:{key}", partition_key=key, tags={SWEEP_TAG: sweep_id})

    return experiment_sweep


def build_sweep_sensor(sweep_evaluate_job) -> dg.SensorDefinition:
    """`sweep_evaluations`: evaluate each model partition a sweep run trained."""

    @dg.sensor(job=sweep_evaluate_job, name="sweep_evaluations", minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="When a run tagged pecn/sweep materialises ip2p_model/<seed>|<variant>, requests "
                           "evaluation of the same partition (every eval set). Cursor: event storage id.")
    def sweep_evaluations(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        after = int(context.cursor) if context.cursor else None
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=IP2P_MODEL, after_storage_id=after), limit=200, ascending=True,
        ).records
        if not records:
            return dg.SensorResult(skip_reason="no new ip2p_model materialisation", cursor=context.cursor)
        latest_by_key: dict[str, str] = {}
        for record in records:
            run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
            sweep = run.tags.get(SWEEP_TAG) if run else None
            if sweep and record.partition_key:
                latest_by_key[record.partition_key] = sweep
        cursor = str(max(r.storage_id for r in records))
        requests = [dg.RunRequest(run_key=f"{sweep}:{key}", partition_key=key, tags={SWEEP_TAG: sweep})
                    for key, sweep in latest_by_key.items()]
        if not requests:
            return dg.SensorResult(skip_reason=f"{len(records)} new ip2p_model materialisation(s), none from "
                                               f"a sweep run (tag {SWEEP_TAG})", cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return sweep_evaluations


# ---------------------------------------------------------------------------------------------
# Frame cache: rebuild partitions that are missing or stale.
# ---------------------------------------------------------------------------------------------

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


def stale_frame_cache_partitions(instance: dg.DagsterInstance, frame_cache: dg.AssetsDefinition
                                 ) -> list[tuple[str, str, str]]:
    """(partition, reason, state) for each frame_cache partition that is missing or stale.

    Stale: an upstream's data version differs from the one recorded when the partition was
    built (`dagster/input_data_version/<upstream>`), or frame_cache's code version changed.
    `state` is a short hash of the upstream versions and code version the rebuild would use.
    """
    key = frame_cache.key
    upstream = sorted({dep.asset_key for dep in frame_cache.specs_by_key[key].deps},
                      key=lambda k: k.to_user_string())
    code_version = frame_cache.code_versions_by_key.get(key)
    current = {up.to_user_string(): current_data_version(instance, up) for up in upstream}
    state = hashlib.sha256(json.dumps({"upstream": current, "code_version": code_version},
                                      sort_keys=True).encode()).hexdigest()[:16]
    out = []
    for partition in frame_cache.partitions_def.get_partition_keys():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
        if not records:
            out.append((partition, "missing", state))
            continue
        tags = records[0].asset_materialization.tags or {}
        changed = [name for name, version in current.items()
                   if version is not None and tags.get(INPUT_DATA_VERSION_PREFIX + name) != version]
        if changed:
            out.append((partition, " and ".join(changed) + " changed", state))
        elif code_version is not None and tags.get(CODE_VERSION_TAG) != code_version:
            out.append((partition, f"code version {tags.get(CODE_VERSION_TAG)} -> {code_version}", state))
    return out


def build_frame_cache_schedule(frame_cache: dg.AssetsDefinition, frame_cache_job) -> dg.ScheduleDefinition:
    """The `refresh_frame_cache` schedule at the cron in `PECN_FRAME_CACHE_CRON` (default hourly)."""

    @dg.schedule(cron_schedule=_cron(FRAME_CACHE_CRON_ENV, DEFAULT_FRAME_CACHE_CRON), job=frame_cache_job,
                 name="refresh_frame_cache", execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.STOPPED,
                 description="Builds frame_cache partitions never materialised or whose upstream "
                             "(filtered_annotations, raw_videos) data version or code version changed.")
    def refresh_frame_cache(context: dg.ScheduleEvaluationContext):
        if current_data_version(context.instance, dg.AssetKey("filtered_annotations")) is None:
            yield dg.SkipReason("filtered_annotations has never been materialised: nothing to cache yet")
            return
        stale = stale_frame_cache_partitions(context.instance, frame_cache)
        if not stale:
            yield dg.SkipReason("every frame_cache partition is up to date")
            return
        waiting = []
        for partition, reason, state in stale:
            tried = context.instance.get_run_records(
                dg.RunsFilter(tags={FRAME_CACHE_STATE_TAG: state, PARTITION_TAG: partition}), limit=1)
            if tried:  # in progress, or failed for this very state: don't pile up runs
                waiting.append(f"{partition} ({reason}): run {tried[0].dagster_run.run_id} "
                               f"is {tried[0].dagster_run.status.value}")
                continue
            yield dg.RunRequest(run_key=f"{partition}:{state}", partition_key=partition,
                                tags={FRAME_CACHE_STATE_TAG: state, FRAME_CACHE_REASON_TAG: reason})
        if waiting and len(waiting) == len(stale):
            yield dg.SkipReason("already requested for this state: " + "; ".join(waiting))

    return refresh_frame_cache


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
# Declarative automation (frame_cache: eager) and the lists definitions.py imports.
# ---------------------------------------------------------------------------------------------

def _automation_status() -> dg.DefaultSensorStatus:
    off = os.environ.get(AUTOMATION_ENV, "on").strip().lower() in ("off", "0", "false", "no")
    return dg.DefaultSensorStatus.STOPPED if off else dg.DefaultSensorStatus.RUNNING


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "pecn_automation", target=dg.AssetSelection.all(), default_status=_automation_status(),
        minimum_interval_seconds=60,
        description="Evaluates the assets' automation conditions (frame_cache: eager, i.e. rebuilt when "
                    "filtered_annotations or raw_videos change). PECN_AUTOMATION=off starts it stopped.")


@dg.sensor(name="release_dead_runs", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Fails the runs of this machine whose processes are all gone (killed, crashed) and frees "
                       "their pool slots, which would otherwise block every later GPU step; the default run "
                       "launcher gives Dagster's run monitoring no way to see a dead run worker.")
def release_dead_runs_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    released = release_dead_runs(context.instance, log=context.log.info)
    return dg.SkipReason(f"released {len(released)} dead run(s): {', '.join(released)}" if released
                         else "no dead runs")


def build_jobs(parts: Partitions, frame_cache: dg.AssetsDefinition) -> tuple[list, list, list]:
    """(jobs, schedules, sensors) of one deployment, with the executor `PECN_EXECUTOR` names."""
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
    by_name = {j.name: j for j in jobs}
    schedules = [build_sweep_schedule(parts, by_name["sweep_train"]),
                 build_frame_cache_schedule(frame_cache, by_name["build_frame_cache"])]
    sensors = [build_sweep_sensor(by_name["sweep_evaluate"]), annotations_changed, build_automation_sensor(),
               release_dead_runs_sensor]
    return jobs, schedules, sensors
