"""The main job: make the demo data, then materialise the whole asset graph into DAGSTER_HOME.

    python -m pecn_assets.demo            # = `make demo`

Generates the synthetic SSv2 set of the active profile (demo) when missing, observes the raw
sources, then materialises every asset and partition in dependency order, each as a run of
Dagster's asset job in the instance at $DAGSTER_HOME (default: ./dagster_home), so that
`dagster dev` afterwards shows the graph with its runs, metadata and lineage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import dagster as dg

from pecn_assets.partitions import SEED_PARTITIONS, add_seeds, deployment_seeds
from pecn_assets.runs import PID_TAG, in_process_tags, release_dead_runs  # PID_TAG: names the process of its runs

ORDER = ("filtered_annotations", "frame_cache", "pix2pix_base", "resnet_base", "clip_text_base", "pacnet",
         "progress_estimates", "copy_frame_baseline", "ip2p_model", "evaluation", "t_tests", "summary_report")


def plan(defs, instance) -> list[tuple[str, list]]:
    """(asset, partition keys) in dependency order, every materialisable asset of `defs` once;
    `[None]` for unpartitioned assets. (ip2p_model and evaluation: one key per seed x variant, for
    the seeds in `instance`: the seed dimension is dynamic.)"""
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.materializable_asset_keys}
    missing = keys - set(ORDER)
    assert not missing, f"demo plan: no place for {sorted(missing)} in ORDER"
    out = []
    for asset in ORDER:
        partitions_def = graph.get(dg.AssetKey(asset)).partitions_def
        out.append((asset, partitions_def.get_partition_keys(dynamic_partitions_store=instance)
                       if partitions_def else [None]))
    return out


def ensure_synthetic_data(data_dir: Path, config) -> None:
    """Write the synthetic SSv2 set unless one made with the same config is already there."""
    from pecn_ml.data.synthetic import write_synthetic_ssv2

    stamp = data_dir / "synthetic_config.json"
    wanted = json.dumps(asdict(config), sort_keys=True, default=str)
    if stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        print(f"synthetic data up to date in {data_dir}")
        return
    t0 = time.perf_counter()
    summary = write_synthetic_ssv2(data_dir, config, log=print)
    stamp.write_text(wanted, encoding="utf-8")
    print(f"synthetic data written to {data_dir} in {time.perf_counter() - t0:.1f}s: "
          f"{summary['num_videos']} videos, splits {summary['splits']}")


def materialize_all(instance, defs, only: list[str] | None = None, run_config: dict | None = None,
                    log=print) -> bool:
    """Add the deployment's training seeds to `instance` when missing, observe the raw sources, then
    materialise every asset/partition of `defs` in order (with its asset checks), one run each (every
    seed in the instance, those added in the UI too). `run_config`: {asset: op config} for the runs
    of that asset.

    Returns False at the first failed run, a failed blocking check included (its events are in
    `instance`).
    """
    job = defs.resolve_implicit_global_asset_job_def()
    t_start = time.perf_counter()
    release_dead_runs(instance, log=log)  # runs of earlier processes that were killed hold pool slots
    tags = in_process_tags()
    added = add_seeds(instance, deployment_seeds(defs))
    if added:
        log(f"training seeds {', '.join(added)} added to the instance's {SEED_PARTITIONS} partitions")
    if not only:
        defs.resolve_job_def("observe_sources").execute_in_process(instance=instance, tags=tags)
    for asset, keys in plan(defs, instance):
        if only and asset not in only:
            continue
        config = {"ops": {asset: {"config": run_config[asset]}}} if run_config and asset in run_config else None
        for key in keys:
            t0 = time.perf_counter()
            result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(asset)],
                                            partition_key=key, raise_on_error=False, tags=tags, run_config=config)
            status = "ok" if result.success else "FAILED"
            log(f"[{time.perf_counter() - t_start:7.1f}s] {asset}{'/' + str(key) if key else ''}: "
                f"{status} in {time.perf_counter() - t0:.1f}s (run {result.run_id})")
            if not result.success:
                return False
    log(f"graph materialised in {time.perf_counter() - t_start:.1f}s")
    return True


def prediction_summary(instance, defs) -> str:
    """The table the demo ends with (`pecn_ml.report.prediction_table`): every evaluation partition
    beside latent copy, copy-frame and the ceiling, and the progress t-tests, read back through
    the I/O manager (verified) from `instance`."""
    from pecn_assets.assets.evaluation import results_by_model
    from pecn_ml.report import prediction_table

    graph = defs.resolve_asset_graph()
    keys = graph.get(dg.AssetKey("evaluation")).partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    evaluation = {k: defs.load_asset_value("evaluation", partition_key=k, instance=instance) for k in keys}
    return prediction_table(results_by_model(evaluation), defs.load_asset_value("t_tests", instance=instance).rows())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="materialise only these assets (and no data step)")
    parser.add_argument("--summary", action="store_true",
                        help="only print the prediction table of the evaluations already materialised")
    args = parser.parse_args(argv)
    os.environ.setdefault("PECN_PROFILE", "demo")
    os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").absolute()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    from pecn_assets.definitions import build_definitions, deployment_from_env
    from pecn_assets.gpu_pool import size_gpu_pool

    t0 = time.perf_counter()
    deployment = deployment_from_env(os.environ)
    profile, settings = deployment["profile"], deployment["settings"]
    if profile.synthetic is not None and not args.only and not args.summary:
        ensure_synthetic_data(settings.data_path(), profile.synthetic)
    defs = build_definitions(**deployment)
    with dg.DagsterInstance.get() as instance:
        if args.summary:
            print(prediction_summary(instance, defs))
            return 0
        print(size_gpu_pool(instance, settings, explicit=deployment["gpu_pool_limit"]).line(), flush=True)
        ok = materialize_all(instance, defs, only=args.only, log=lambda line: print(line, flush=True))
        if not ok:
            print(f"stopped at a failed run: see it in `make ui` (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
            return 1
        print(f"demo done in {time.perf_counter() - t0:.1f}s (data and graph)\n")
        if args.only:
            return 0
        print("Model vs latent copy (its own VAE's round trip of frame 20), copy-frame and the VAE ceiling; "
              "motion PSNR = where the frame changes; diff = model - latent copy (paired, p):")
        print(prediction_summary(instance, defs))
    print("Open the UI: make ui  (http://127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
