"""Materialise asset partitions in graph order (the order read from the asset graph), one run each:
the loop of `make demo` and `make rehearse`."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

import dagster as dg

from pecn_assets.partitions import SEED_PARTITIONS, add_seeds, deployment_seeds
from pecn_assets.runs import in_process_tags, release_dead_runs

Step = tuple[str, Optional[str]]   # (asset, partition key or None)


def plan(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[tuple[str, list]]:
    """(asset, partition keys) of every materialisable asset once, upstream before downstream;
    `[None]` for an unpartitioned asset (the seed dimension's keys are read from `instance`)."""
    graph = defs.resolve_asset_graph()
    wanted = graph.materializable_asset_keys
    out = []
    for key in graph.toposorted_asset_keys:  # by level, alphabetical within one
        if key in wanted:
            partitions_def = graph.get(key).partitions_def
            out.append((key.to_user_string(), partitions_def.get_partition_keys(dynamic_partitions_store=instance)
                        if partitions_def else [None]))
    return out


def plan_steps(defs: dg.Definitions, instance: dg.DagsterInstance, only: Optional[Iterable[str]] = None) -> list[Step]:
    """`plan` one partition a step, only the assets in `only` when given."""
    return [(asset, key) for asset, keys in plan(defs, instance) if not only or asset in only for key in keys]


def step_name(asset: str, key: Optional[str]) -> str:
    return f"{asset}/{key}" if key else asset


def run_partition(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, key: Optional[str],
                  tags: Optional[dict] = None) -> dg.ExecuteInProcessResult:
    """One run of Dagster's asset job for one asset partition (with its checks); never raises."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(asset)], partition_key=key, raise_on_error=False, tags=tags)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """The errors of a failed in-process run (step failures, failed blocking checks)."""
    lines = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            err = event.event_specific_data.error
            lines.append(f"step {event.step_key} failed: {err.to_string() if err else '(no error)'}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed:
            lines.append(f"check {event.event_specific_data.check_name} failed")
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and not lines:
            lines.append(event.message or "run failed")
    return "\n".join(lines) or "run failed (no failure event)"


def in_order(steps: Iterable[Step], run: Callable[[str, Optional[str]], tuple[bool, str]],
             log: Callable[[str], None] = print, t_start: Optional[float] = None, announce: bool = False) -> bool:
    """`run(asset, key) -> (ok, line)` for each step in turn, each line logged after the time since
    `t_start`; False at the first step that fails (the rest do not run)."""
    t_start = time.perf_counter() if t_start is None else t_start
    for asset, key in steps:
        if announce:
            log(f"[{time.perf_counter() - t_start:7.1f}s] {step_name(asset, key)} ...")
        ok, line = run(asset, key)
        log(f"[{time.perf_counter() - t_start:7.1f}s] {line}")
        if not ok:
            return False
    return True


def materialize_all(instance: dg.DagsterInstance, defs: dg.Definitions, only: Optional[list[str]] = None,
                    log: Callable[[str], None] = print) -> bool:
    """Release dead runs, add the deployment's seeds to `instance`, observe the raw sources (unless
    `only`), then materialise every asset partition in graph order (every seed in the instance);
    False at the first failed run, a failed blocking check included."""
    t_start = time.perf_counter()
    release_dead_runs(instance, log=log)  # runs of earlier processes that were killed hold pool slots
    tags = in_process_tags()
    added = add_seeds(instance, deployment_seeds(defs))
    if added:
        log(f"training seeds {', '.join(added)} added to the instance's {SEED_PARTITIONS} partitions")
    if not only:
        observed = defs.resolve_job_def("observe_sources").execute_in_process(
            instance=instance, tags=tags, raise_on_error=False)
        if not observed.success:
            log(f"observe_sources: FAILED (run {observed.run_id})")
            return False

    def run(asset: str, key: Optional[str]) -> tuple[bool, str]:
        t0 = time.perf_counter()
        result = run_partition(defs, instance, asset, key, tags)
        return result.success, (f"{step_name(asset, key)}: {'ok' if result.success else 'FAILED'} in "
                                f"{time.perf_counter() - t0:.1f}s (run {result.run_id})")

    if not in_order(plan_steps(defs, instance, only), run, log, t_start):
        return False
    log(f"graph materialised in {time.perf_counter() - t_start:.1f}s")
    return True
