"""Sensors and jobs of the real `pecn_assets` Definitions, driven by Dagster's test contexts (the
weekly backfill's automation conditions: test_automation.py).

Upstream materialisations are made with small stand-in assets that carry the real asset keys, so
the real sensors read genuine Dagster events: data version tags, run tags.
"""

import json
from pathlib import Path

import dagster as dg
import pytest

from pecn_assets import jobs
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.data.versions import annotations_version
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import get_profile

# The smoke profile: the demo's graph with every frame-cache resolution of the real run (the demo
# caches 96 px only; frame_cache's automation is about several partitions).
PARTS = Partitions.build(get_profile("smoke"), (0,))
resolution_partitions = PARTS.resolution


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from pecn_assets.build import build_definitions

    return build_definitions(Deployment.from_env({"PECN_PROFILE": "smoke", "PECN_SEEDS": "0"}))


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()  # in-memory: fast; enough for sensor contexts


def _job_asset_keys(defs: dg.Definitions, job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {k.to_user_string() for k in job.asset_layer.selected_asset_keys}


# --- stand-ins carrying real asset keys -------------------------------------------------------

class VersionConfig(dg.Config):
    version: str = "v1"


@dg.asset(name="filtered_annotations")
def filtered_annotations_standin(config: VersionConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion(config.version))


def _set_filtered(instance, version: str) -> None:
    dg.materialize([filtered_annotations_standin], instance=instance,
                   run_config={"ops": {"filtered_annotations": {"config": {"version": version}}}})


def _observe_videos(instance, version: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetObservation(asset_key="raw_videos", tags={jobs.DATA_VERSION_TAG: version}))


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


# --- training seeds: dynamic partitions -------------------------------------------------------

def test_register_seeds_adds_the_deployment_seeds_once(instance):
    from pecn_assets.partitions import SEED_PARTITIONS

    sensor = jobs.build_seed_sensor((0, 3))
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    (request,) = first.dynamic_partitions_requests
    assert request.partitions_def_name == SEED_PARTITIONS and list(request.partition_keys) == ["0", "3"]
    instance.add_dynamic_partitions(SEED_PARTITIONS, list(request.partition_keys))  # what the daemon does
    second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert not second.dynamic_partitions_requests and "registered" in second.skip_message

    instance.delete_dynamic_partition(SEED_PARTITIONS, "3")  # deleted in the UI: it stays deleted
    third = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=second.cursor))
    assert not third.dynamic_partitions_requests
    fresh = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))  # a new cursor (sensor reset)
    assert [list(r.partition_keys) for r in fresh.dynamic_partitions_requests] == [["3"]]


def test_model_partition_keys_are_unchanged_and_come_from_the_instance(instance):
    from pecn_assets.partitions import add_seeds, seed_and_variant

    parts = Partitions.build(get_profile("demo"), (0,))
    assert parts.model.get_partition_keys(dynamic_partitions_store=instance) == []  # nothing registered yet
    assert add_seeds(instance, (0,)) == ["0"] and add_seeds(instance, (0,)) == []
    instance.add_dynamic_partitions("training_seed", ["5"])  # the UI's "Add a partition"
    keys = parts.model.get_partition_keys(dynamic_partitions_store=instance)
    assert keys[:2] == ["0|next1", "0|next1_progress"] and "5|next5_shuffled" in keys and len(keys) == 12
    assert str(dg.MultiPartitionKey({"seed": "5", "variant": "next1"})) == "5|next1"
    assert seed_and_variant("5|next1") == (5, "next1")
    with pytest.raises(dg.Failure, match="not an integer"):
        seed_and_variant("five|next1")


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


def test_automation_sensor_can_start_stopped():
    from pecn_assets.build import build_definitions

    off = build_definitions(Deployment.from_env({"PECN_PROFILE": "smoke", "PECN_AUTOMATION": "off"}))
    assert off.get_sensor_def("pecn_automation").default_status == dg.DefaultSensorStatus.STOPPED
    assert jobs.build_automation_sensor(True).default_status == dg.DefaultSensorStatus.RUNNING


def test_executor_is_chosen_by_the_deployment():
    assert jobs.pecn_executor(Deployment.from_env({}).executor) is dg.multi_or_in_process_executor
    assert jobs.pecn_executor(Deployment.from_env({"PECN_EXECUTOR": "k8s"}).executor).name == "k8s"
    assert jobs.pecn_executor(Deployment.from_env({"PECN_EXECUTOR": "In_Process"}).executor) is dg.in_process_executor
    with pytest.raises(ValueError, match="PECN_EXECUTOR"):
        Deployment.from_env({"PECN_EXECUTOR": "celery"})
    with pytest.raises(ValueError, match="PECN_EXECUTOR"):
        jobs.pecn_executor("celery")


def test_definitions_load_with_every_job_schedule_and_sensor(defs):
    dg.Definitions.validate_loadable(defs)
    assert {"observe_sources", "refilter_annotations", "build_frame_cache", "sweep_train", "sweep_evaluate",
            "cleanup_checkpoints"} <= {j.name for j in defs.jobs}
    assert not defs.schedules  # the weekly backfill is declarative automation (tests/pecn_assets/test_automation.py)
    assert {s.name for s in defs.sensors} == {"register_seeds", "annotations_changed", "pecn_automation",
                                              "release_dead_runs", "gpu_pool_size"}
