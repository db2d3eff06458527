"""The weekly backfill of what changed (pecn_assets/automation.py), evaluated by Dagster's own
automation evaluator on the real smoke Definitions. Materialisations are reported as runless
events with data versions (cheap, no training); each test walks through ticks with a cursor, as
the `pecn_automation` sensor does."""

import dataclasses
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from pecn_assets.automation import DEFAULT_SWEEP_CRON, backfill_cron
from pecn_assets.build import build_definitions
from pecn_assets.jobs import DATA_VERSION_TAG
from pecn_assets.partitions import add_seeds
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import get_profile
from pecn_ml.variants import VARIANTS

SEEDS = (0, 1)
PROFILE = get_profile("smoke")  # frame-cache resolutions 96 (both trainers read it), 128, 224, ...
MODELS = {f"{s}|{v}" for s in SEEDS for v in VARIANTS}
HEADS = {"regression", "classification"}


def _defs(profile=PROFILE) -> dg.Definitions:
    return build_definitions(Deployment(sweep_cron=DEFAULT_SWEEP_CRON), profile=profile, seeds=SEEDS)


def _saturday_3am_after(t: datetime) -> datetime:
    """The first weekly tick (Saturday 03:00 UTC) after `t`."""
    day = (t + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    while day.weekday() != 5:
        day += timedelta(days=1)
    return day


class Ticks:
    """An instance and the automation sensor's cursor, one evaluation per `tick(when)`."""

    def __init__(self, defs: dg.Definitions):
        self.defs, self.instance, self.cursor = defs, dg.DagsterInstance.ephemeral(), None
        add_seeds(self.instance, SEEDS)
        # the events are stamped with the real clock: every tick is evaluated after them
        self.start = _saturday_3am_after(datetime.now(timezone.utc)) + timedelta(days=3)
        assert self.start.weekday() == 1  # a Tuesday: the first tick, before any weekly tick

    def report(self, asset: str, version: str, partition=None) -> None:
        self.instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=asset, partition=partition, tags={DATA_VERSION_TAG: version}))

    def fill(self) -> None:
        """Every source observed, every asset partition materialised (version "v1")."""
        graph = self.defs.resolve_asset_graph()
        for key in graph.observable_asset_keys - graph.materializable_asset_keys:
            self.instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, tags={DATA_VERSION_TAG: "v1"}))
        for key in graph.toposorted_asset_keys:
            if key not in graph.materializable_asset_keys:
                continue
            partitions_def = graph.get(key).partitions_def
            for partition in partitions_def.get_partition_keys(dynamic_partitions_store=self.instance) \
                    if partitions_def else [None]:
                self.report(key.to_user_string(), "v1", partition)

    def tick(self, when: datetime, defs=None) -> dict[str, set]:
        """{asset: partitions requested} of one evaluation at `when` (partitions None if unpartitioned)."""
        result = dg.evaluate_automation_conditions(defs=defs or self.defs, instance=self.instance,
                                                   evaluation_time=when, cursor=self.cursor)
        self.cursor = result.cursor
        graph = (defs or self.defs).resolve_asset_graph()
        return {k.to_user_string(): result.get_requested_partitions(k) for k in graph.materializable_asset_keys
                if result.get_requested_partitions(k)}

    def week(self, n: int = 1) -> tuple[datetime, datetime]:
        """(Wednesday, Saturday 03:05) of week `n` after the first tick (week 1: the same week)."""
        wednesday = self.start + timedelta(days=1, weeks=n - 1)
        return wednesday, _saturday_3am_after(wednesday) + timedelta(minutes=5)


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return _defs()


@pytest.fixture
def ticks(defs) -> Ticks:
    t = Ticks(defs)
    t.fill()
    assert t.tick(t.start) == {}  # the first evaluation only starts the cursor
    return t


def test_a_weekly_tick_with_nothing_stale_launches_nothing(ticks):
    wednesday, saturday = ticks.week(1)
    assert ticks.tick(wednesday) == {}
    assert ticks.tick(saturday) == {}
    ticks.report("pix2pix_base", "v1")  # rebuilt, same weights (the stand-in's build reused): not stale
    ticks.report("filtered_annotations", "v1")
    wednesday, saturday = ticks.week(2)
    assert ticks.tick(wednesday) == {}
    assert ticks.tick(saturday) == {}


def test_new_base_weights_retrain_and_re_evaluate_every_model_at_the_weekly_tick(ticks):
    wednesday, saturday = ticks.week(1)
    ticks.report("pix2pix_base", "v2")
    assert ticks.tick(wednesday) == {}  # noticed, but training waits for the weekly tick
    assert ticks.tick(saturday) == {"ip2p_model": MODELS, "evaluation": MODELS}  # each evaluation with its model
    assert ticks.tick(saturday + timedelta(minutes=5)) == {}  # requested once
    assert ticks.tick(ticks.week(2)[1]) == {}  # and not again the week after


def test_a_model_and_its_evaluation_requested_together_are_one_backfill(ticks):
    """What the automation sensor launches from a tick's requests (Dagster's own builder, private:
    `build_run_requests`): one asset backfill holding models and evaluations, whose daemon runs each
    evaluation after its model; without backfills, one run per partition with both assets."""
    from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests

    ticks.report("pix2pix_base", "v2")
    ticks.tick(ticks.week(1)[0])
    result = dg.evaluate_automation_conditions(defs=ticks.defs, instance=ticks.instance,
                                               evaluation_time=ticks.week(1)[1], cursor=ticks.cursor)
    graph = ticks.defs.resolve_asset_graph()
    (backfill,) = build_run_requests(result._requested_subsets, graph, {}, emit_backfills=True)
    assert backfill.requires_backfill_daemon()
    assert {k.to_user_string() for k in backfill.asset_graph_subset.asset_keys} == {"ip2p_model", "evaluation"}
    runs = build_run_requests(result._requested_subsets, graph, {}, emit_backfills=False)
    assert {r.partition_key: {k.to_user_string() for k in r.asset_selection} for r in runs} == {
        key: {"ip2p_model", "evaluation"} for key in MODELS}


def test_new_text_encoder_retrains_pacnet_and_its_estimates_follow(ticks):
    ticks.report("clip_text_base", "v2")
    wednesday, saturday = ticks.week(1)
    assert ticks.tick(wednesday) == {}
    assert ticks.tick(saturday) == {"pacnet": HEADS}
    ticks.report("pacnet", "v2", partition="classification")  # progress_estimates reads the regression head
    assert ticks.tick(saturday + timedelta(hours=1)) == {}
    ticks.report("pacnet", "v2", partition="regression")
    assert ticks.tick(saturday + timedelta(hours=2)) == {"progress_estimates": {None}}
    assert ticks.tick(ticks.week(2)[1]) == {}


def test_a_frame_cache_partition_retrains_only_what_reads_it(ticks):
    ticks.report("frame_cache", "v2", partition="224")  # no trainer reads 224 px in this profile
    wednesday, saturday = ticks.week(1)
    assert ticks.tick(wednesday) == {}
    assert ticks.tick(saturday) == {}
    ticks.report("frame_cache", "v2", partition=str(PROFILE.pix2pix_resolution))
    assert PROFILE.pix2pix_resolution == PROFILE.pacnet_resolution
    assert ticks.tick(ticks.week(2)[1]) == {"ip2p_model": MODELS, "evaluation": MODELS, "pacnet": HEADS}


def test_a_model_trained_by_hand_is_evaluated_at_once(ticks):
    wednesday, saturday = ticks.week(1)
    ticks.report("ip2p_model", "v2", partition="1|next5_progress")
    assert ticks.tick(wednesday) == {"evaluation": {"1|next5_progress"}}
    ticks.report("evaluation", "v2", partition="1|next5_progress")
    assert ticks.tick(wednesday + timedelta(minutes=1)) == {}
    assert ticks.tick(saturday) == {}


def test_a_seed_added_at_run_time_fills_its_row_at_the_weekly_tick(ticks):
    wednesday, saturday = ticks.week(1)
    ticks.instance.add_dynamic_partitions("training_seed", ["7"])  # what the UI's "Add a partition" does
    row = {f"7|{v}" for v in VARIANTS}
    assert ticks.tick(wednesday) == {}
    assert ticks.tick(saturday) == {"ip2p_model": row, "evaluation": row}  # the new row only, models and evaluations
    for key in row:
        ticks.report("ip2p_model", "v1", partition=key)
        ticks.report("evaluation", "v1", partition=key)
    assert ticks.tick(saturday + timedelta(hours=1)) == {}  # trained and evaluated in the same runs: done
    assert ticks.tick(ticks.week(2)[1]) == {}


def test_new_progress_estimates_retrain_nothing(ticks):
    ticks.report("progress_estimates", "v2")  # read only when a run asks for use_progress_estimator
    assert ticks.tick(ticks.week(1)[1]) == {}


def test_a_changed_training_config_retrains_its_models_at_the_weekly_tick(ticks):
    train = dataclasses.replace(PROFILE.pix2pix_train, learning_rate=PROFILE.pix2pix_train.learning_rate * 2)
    changed = _defs(dataclasses.replace(PROFILE, pix2pix_train=train))
    code = lambda d: d.get_assets_def("ip2p_model").code_versions_by_key[dg.AssetKey("ip2p_model")]  # noqa: E731
    assert code(changed) != code(ticks.defs)
    wednesday, saturday = ticks.week(1)
    assert ticks.tick(wednesday, changed) == {}  # the new code location is loaded on Wednesday
    assert ticks.tick(saturday, changed) == {"ip2p_model": MODELS, "evaluation": MODELS}
    assert ticks.tick(ticks.week(2)[1], changed) == {}


def test_nothing_trains_while_an_input_is_missing():
    t = Ticks(_defs())
    t.tick(t.start)
    assert t.tick(t.week(1)[1]) == {}  # nothing materialised: frame_cache waits for its inputs, models too


def test_the_cron_comes_from_the_deployment_settings():
    assert backfill_cron(Deployment.from_env({}).sweep_cron) == DEFAULT_SWEEP_CRON == "0 3 * * 6"
    assert backfill_cron(Deployment.from_env({"PECN_SWEEP_CRON": "30 1 * * *"}).sweep_cron) == "30 1 * * *"
    with pytest.raises(ValueError, match="PECN_SWEEP_CRON"):   # refused when the definitions load
        build_definitions(Deployment.from_env({"PECN_PROFILE": "smoke", "PECN_SWEEP_CRON": "every saturday"}))


def test_the_automation_sensor_is_in_the_definitions_and_runs_by_default(defs):
    sensor = defs.get_sensor_def("pecn_automation")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.emit_backfills  # a tick's requests of several partitions: one backfill, in dependency order
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert not defs.schedules  # the weekly sweep is the automation conditions' cron now
    graph = defs.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.materializable_asset_keys if graph.get(k).automation_condition}
    assert automated == {"frame_cache", "pacnet", "progress_estimates", "ip2p_model", "evaluation"}


def test_frame_cache_follows_its_inputs_data_versions_and_code_version_at_once(ticks):
    resolutions = {str(r) for r in PROFILE.resolutions}
    assert len(resolutions) > 1
    wednesday, _ = ticks.week(1)
    ticks.instance.report_runless_asset_event(dg.AssetObservation(asset_key="raw_videos", tags={DATA_VERSION_TAG: "v1"}))
    assert ticks.tick(wednesday) == {}  # observed again, unchanged
    ticks.instance.report_runless_asset_event(dg.AssetObservation(asset_key="raw_videos", tags={DATA_VERSION_TAG: "v2"}))
    assert ticks.tick(wednesday + timedelta(minutes=1)) == {"frame_cache": resolutions}  # eager: no weekly wait
    for r in resolutions:
        ticks.report("frame_cache", "v1", partition=r)  # rebuilt, same frames
    assert ticks.tick(wednesday + timedelta(minutes=2)) == {}

    new_code = [a.map_asset_specs(lambda spec: spec.replace_attributes(code_version="changed"))
                if isinstance(a, dg.AssetsDefinition) and a.key == dg.AssetKey("frame_cache") else a
                for a in ticks.defs.assets]
    changed = dg.Definitions(assets=new_code, resources=ticks.defs.resources)
    assert ticks.tick(wednesday + timedelta(minutes=3), changed) == {"frame_cache": resolutions}
