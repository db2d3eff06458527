"""Schedules, sensors and jobs of the real `pecn_assets` Definitions, driven by Dagster's test contexts.

Upstream materialisations are made with small stand-in assets that carry the real asset keys (and,
for frame_cache, the real code version), so the real schedules and sensors read genuine Dagster
events: data version tags, input data version tags, run tags.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest

from pecn_assets import jobs
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.data.versions import annotations_version
from pecn_ml.profiles import get_profile
from pecn_ml.variants import VARIANTS

# The smoke profile: the demo's graph with every frame-cache resolution of the real run (the demo
# caches 96 px only, and the schedule's logic is about several partitions).
PARTS = Partitions.build(get_profile("smoke"), (0,))
resolution_partitions = PARTS.resolution


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from pecn_assets.definitions import build_definitions, deployment_from_env

    return build_definitions(**deployment_from_env({"PECN_PROFILE": "smoke", "PECN_SEEDS": "0"}))


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()  # in-memory: fast; enough for sensor contexts


@pytest.fixture
def persistent_instance(tmp_path):
    """Schedule contexts need an instance with a ref: SQLite, one event-log file, no compute logs."""
    overrides = {
        "event_log_storage": {"module": "dagster._core.storage.event_log",
                              "class": "ConsolidatedSqliteEventLogStorage",
                              "config": {"base_dir": str(tmp_path / "event_log")}},
        "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager",
                         "class": "NoOpComputeLogManager"},
    }
    with dg.instance_for_test(overrides=overrides) as inst:
        yield inst


def _job_asset_keys(defs: dg.Definitions, job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {k.to_user_string() for k in job.asset_layer.selected_asset_keys}


# --- stand-ins carrying real asset keys -------------------------------------------------------

class VersionConfig(dg.Config):
    version: str = "v1"


@dg.asset(name="filtered_annotations")
def filtered_annotations_standin(config: VersionConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion(config.version))


raw_videos_standin = dg.AssetSpec("raw_videos")


def frame_cache_standin(code_version: str, fail: bool = False) -> dg.AssetsDefinition:
    @dg.asset(name="frame_cache", partitions_def=resolution_partitions, code_version=code_version,
              deps=["filtered_annotations", "raw_videos"])
    def _frame_cache() -> dg.MaterializeResult:
        if fail:
            raise dg.Failure("stand-in build failed", allow_retries=False)
        return dg.MaterializeResult(data_version=dg.DataVersion("cache"))

    return _frame_cache


@dg.asset(name="ip2p_model", partitions_def=PARTS.model)
def ip2p_model_standin() -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion("unet-sha"))


def _set_filtered(instance, version: str) -> None:
    dg.materialize([filtered_annotations_standin], instance=instance,
                   run_config={"ops": {"filtered_annotations": {"config": {"version": version}}}})


def _observe_videos(instance, version: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetObservation(asset_key="raw_videos", tags={jobs.DATA_VERSION_TAG: version}))


def _build_cache(instance, partition: str, code_version: str, tags=None, fail: bool = False):
    assets = [filtered_annotations_standin, raw_videos_standin, frame_cache_standin(code_version, fail)]
    return dg.materialize(assets, selection=["frame_cache"], partition_key=partition, instance=instance,
                          tags=tags, raise_on_error=not fail)


def _tick(schedule: dg.ScheduleDefinition, instance, defs: dg.Definitions):
    return schedule.evaluate_tick(dg.build_schedule_context(
        instance=instance, repository_def=defs.get_repository_def()))


# --- the experiment sweep ---------------------------------------------------------------------

def test_sweep_schedule_requests_one_training_run_per_variant(defs, persistent_instance):
    instance = persistent_instance
    schedule = defs.get_schedule_def("experiment_sweep")
    assert schedule.cron_schedule == jobs.DEFAULT_SWEEP_CRON
    assert _job_asset_keys(defs, schedule.job_name) == {"ip2p_model"}
    when = datetime(2026, 3, 7, 3, 0, tzinfo=timezone.utc)
    data = schedule.evaluate_tick(dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()))
    requests = data.run_requests
    assert sorted(r.partition_key for r in requests) == sorted(f"0|{v}" for v in VARIANTS)
    assert {"0|next1_shuffled", "0|next5_shuffled"} <= {r.partition_key for r in requests}  # the control arms
    assert len(requests) == 6
    assert {r.tags[jobs.SWEEP_TAG] for r in requests} == {"20260307T0300Z"}
    assert len({r.run_key for r in requests}) == len(VARIANTS)


def test_sweep_trains_every_seed():
    parts = Partitions.build(get_profile("demo"), (3, 7))
    train_job = dg.define_asset_job("sweep_train", selection=["ip2p_model"])
    schedule = jobs.build_sweep_schedule(parts, train_job)
    when = datetime(2026, 3, 7, 3, 0, tzinfo=timezone.utc)
    requests = list(schedule(dg.build_schedule_context(scheduled_execution_time=when)))
    assert sorted(r.partition_key for r in requests) == sorted(f"{s}|{v}" for s in (3, 7) for v in VARIANTS)


def test_sweep_cron_comes_from_the_environment(monkeypatch):
    train_job = dg.define_asset_job("sweep_train", selection=["ip2p_model"])
    monkeypatch.setenv(jobs.SWEEP_CRON_ENV, "30 1 * * *")
    assert jobs.build_sweep_schedule(PARTS, train_job).cron_schedule == "30 1 * * *"
    monkeypatch.delenv(jobs.SWEEP_CRON_ENV)
    assert jobs.build_sweep_schedule(PARTS, train_job).cron_schedule == "0 3 * * 6"  # weekly
    monkeypatch.setenv(jobs.SWEEP_CRON_ENV, "every saturday")
    with pytest.raises(ValueError, match=jobs.SWEEP_CRON_ENV):
        jobs.build_sweep_schedule(PARTS, train_job)


def test_sweep_evaluations_follow_each_trained_variant(defs, instance):
    sensor = defs.get_sensor_def("sweep_evaluations")
    assert _job_asset_keys(defs, sensor.job_name) == {"evaluation"}
    repo = defs.get_repository_def()
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo))
    assert not first.run_requests and first.skip_message

    trained, manual = "0|next5_progress", "0|next1"
    dg.materialize([ip2p_model_standin], partition_key=trained, instance=instance,
                   tags={jobs.SWEEP_TAG: "20260307T0300Z"})
    dg.materialize([ip2p_model_standin], partition_key=manual, instance=instance)  # not a sweep run
    second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                                         repository_def=repo))
    expected = {trained}  # the evaluation partition of the same seed and variant (every eval set)
    assert {str(r.partition_key) for r in second.run_requests} == expected
    assert expected <= set(defs.get_assets_def("evaluation").partitions_def.get_partition_keys())
    assert {r.tags[jobs.SWEEP_TAG] for r in second.run_requests} == {"20260307T0300Z"}
    assert second.cursor and second.cursor != first.cursor

    third = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=second.cursor,
                                                        repository_def=repo))
    assert not third.run_requests and "no new" in third.skip_message


# --- frame cache: missing or stale partitions -------------------------------------------------

def test_frame_cache_schedule_rebuilds_missing_and_stale_partitions(defs, persistent_instance):
    instance = persistent_instance
    schedule = defs.get_schedule_def("refresh_frame_cache")
    assert _job_asset_keys(defs, schedule.job_name) == {"frame_cache"}
    code = defs.get_assets_def("frame_cache").code_versions_by_key[dg.AssetKey("frame_cache")]
    partitions = resolution_partitions.get_partition_keys()
    assert len(partitions) >= 2

    data = _tick(schedule, instance, defs)
    assert not data.run_requests and "never been materialised" in data.skip_message

    _set_filtered(instance, "ann-1")
    _observe_videos(instance, "vid-1")
    data = _tick(schedule, instance, defs)
    assert sorted(r.partition_key for r in data.run_requests) == sorted(partitions)
    assert {r.tags[jobs.FRAME_CACHE_REASON_TAG] for r in data.run_requests} == {"missing"}

    for p in partitions:
        _build_cache(instance, p, code)
    data = _tick(schedule, instance, defs)
    assert not data.run_requests and "up to date" in data.skip_message

    _set_filtered(instance, "ann-2")  # the caches were built from ann-1
    data = _tick(schedule, instance, defs)
    assert sorted(r.partition_key for r in data.run_requests) == sorted(partitions)
    assert {r.tags[jobs.FRAME_CACHE_REASON_TAG] for r in data.run_requests} == {"filtered_annotations changed"}

    for p in partitions:
        _build_cache(instance, p, code)
    _observe_videos(instance, "vid-2")
    _build_cache(instance, partitions[0], code)  # only this one sees the new videos
    data = _tick(schedule, instance, defs)
    assert sorted(r.partition_key for r in data.run_requests) == sorted(partitions[1:])
    assert {r.tags[jobs.FRAME_CACHE_REASON_TAG] for r in data.run_requests} == {"raw_videos changed"}


def test_frame_cache_schedule_notices_code_changes_and_does_not_pile_up_runs(defs, persistent_instance):
    instance = persistent_instance
    schedule = defs.get_schedule_def("refresh_frame_cache")
    code = defs.get_assets_def("frame_cache").code_versions_by_key[dg.AssetKey("frame_cache")]
    partitions = resolution_partitions.get_partition_keys()
    _set_filtered(instance, "ann-1")
    _observe_videos(instance, "vid-1")
    _build_cache(instance, partitions[0], code + "-old")
    for p in partitions[1:]:
        _build_cache(instance, p, code)
    data = _tick(schedule, instance, defs)
    assert [r.partition_key for r in data.run_requests] == [partitions[0]]
    assert data.run_requests[0].tags[jobs.FRAME_CACHE_REASON_TAG].startswith("code version")

    # The requested rebuild fails: the next tick must not request the same state again.
    request = data.run_requests[0]
    result = _build_cache(instance, partitions[0], code + "-old", fail=True,
                          tags={jobs.FRAME_CACHE_STATE_TAG: request.tags[jobs.FRAME_CACHE_STATE_TAG]})
    assert not result.success
    data = _tick(schedule, instance, defs)
    assert not data.run_requests
    assert "already requested" in data.skip_message and result.run_id in data.skip_message


# --- raw annotations changed ------------------------------------------------------------------

def _write_annotations(data_dir: Path, train_ids: list[str]) -> Path:
    ann = data_dir / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "labels.json").write_text(json.dumps({"Holding [something]": "0"}), encoding="utf-8")
    for role, ids in (("train", train_ids), ("validation", ["9"]), ("test", [{"id": "7"}])):
        rows = ids if role == "test" else [{"id": i, "label": "holding a cup", "template": "Holding [something]",
                                             "placeholders": ["a cup"]} for i in ids]
        (ann / f"{role}.json").write_text(json.dumps(rows), encoding="utf-8")
    return ann


def test_annotations_sensor_requests_refiltering_only_when_files_change(defs, instance, tmp_path):
    sensor = defs.get_sensor_def("annotations_changed")
    assert _job_asset_keys(defs, sensor.job_name) == {"raw_annotations", "filtered_annotations"}
    assert sensor.required_resource_keys == {"settings"}  # the daemon passes the defs' PecnSettings
    ann = _write_annotations(tmp_path, ["1", "2"])
    resources = {"settings": PecnSettings(data_dir=str(tmp_path))}

    def tick(cursor):
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                            resources=resources))

    first = tick(None)  # never observed: the files are new to this instance
    assert len(first.run_requests) == 1
    assert first.cursor == annotations_version(ann)

    unchanged = tick(first.cursor)
    assert not unchanged.run_requests and "unchanged" in unchanged.skip_message
    assert unchanged.cursor == first.cursor

    _write_annotations(tmp_path, ["1", "2", "3"])  # a new training video
    changed = tick(unchanged.cursor)
    assert len(changed.run_requests) == 1
    assert changed.cursor == annotations_version(ann) != first.cursor
    assert changed.run_requests[0].tags[jobs.ANNOTATIONS_VERSION_TAG] == changed.cursor[:16]


def test_annotations_sensor_first_tick_compares_with_the_last_observation(defs, instance, tmp_path):
    sensor = defs.get_sensor_def("annotations_changed")
    ann = _write_annotations(tmp_path, ["1"])
    instance.report_runless_asset_event(dg.AssetObservation(
        asset_key="raw_annotations", tags={jobs.DATA_VERSION_TAG: annotations_version(ann)}))
    data = sensor.evaluate_tick(dg.build_sensor_context(
        instance=instance, resources={"settings": PecnSettings(data_dir=str(tmp_path))}))
    assert not data.run_requests and data.cursor == annotations_version(ann)


def test_annotations_sensor_skips_with_the_folder_named_when_files_are_missing(defs, instance, tmp_path):
    sensor = defs.get_sensor_def("annotations_changed")
    data = sensor.evaluate_tick(dg.build_sensor_context(
        instance=instance, resources={"settings": PecnSettings(data_dir=str(tmp_path / "nowhere"))}))
    assert not data.run_requests and str(tmp_path / "nowhere") in data.skip_message


# --- declarative automation and the executor --------------------------------------------------

def test_frame_cache_is_eager_and_the_automation_sensor_runs_it(defs, instance):
    fc = defs.get_assets_def("frame_cache")
    assert fc.automation_conditions_by_key.get(fc.key) is not None, "frame_cache needs automation_condition"
    sensor = defs.get_sensor_def("pecn_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    selection = dg.AssetSelection.keys("frame_cache")
    _observe_videos(instance, "vid-1")  # an unobserved source counts as missing: eager would wait
    before = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    assert before.total_requested == 0  # filtered_annotations missing: nothing to cache yet
    _set_filtered(instance, "ann-1")
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                              cursor=before.cursor)
    assert after.get_requested_partitions(fc.key) == set(resolution_partitions.get_partition_keys())


def test_automation_sensor_can_start_stopped(monkeypatch):
    monkeypatch.setenv(jobs.AUTOMATION_ENV, "off")
    assert jobs._automation_status() == dg.DefaultSensorStatus.STOPPED
    monkeypatch.delenv(jobs.AUTOMATION_ENV)
    assert jobs._automation_status() == dg.DefaultSensorStatus.RUNNING


def test_executor_is_chosen_by_environment(monkeypatch):
    monkeypatch.delenv(jobs.EXECUTOR_ENV, raising=False)
    assert jobs.pecn_executor() is dg.multi_or_in_process_executor
    monkeypatch.setenv(jobs.EXECUTOR_ENV, "k8s")
    assert jobs.pecn_executor().name == "k8s"
    monkeypatch.setenv(jobs.EXECUTOR_ENV, "in_process")
    assert jobs.pecn_executor() is dg.in_process_executor
    monkeypatch.setenv(jobs.EXECUTOR_ENV, "celery")
    with pytest.raises(ValueError, match=jobs.EXECUTOR_ENV):
        jobs.pecn_executor()


def test_definitions_load_with_every_job_schedule_and_sensor(defs):
    dg.Definitions.validate_loadable(defs)
    assert {"observe_sources", "refilter_annotations", "build_frame_cache", "sweep_train", "sweep_evaluate",
            "cleanup_checkpoints"} <= {j.name for j in defs.jobs}
    assert {s.name for s in defs.schedules} == {"experiment_sweep", "refresh_frame_cache"}
    assert {"sweep_evaluations", "annotations_changed", "pecn_automation"} <= {s.name for s in defs.sensors}
