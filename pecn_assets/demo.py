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


def plan(partitions) -> list[tuple[str, list]]:
    """(asset, partition keys) in dependency order; `[None]` for unpartitioned assets."""
    return [
        ("filtered_annotations", [None]),
        ("frame_cache", partitions.resolution_partitions.get_partition_keys()),
        ("pacnet", partitions.head_partitions.get_partition_keys()),
        ("progress_estimates", [None]),
        ("copy_frame_baseline", partitions.eval_set_partitions.get_partition_keys()),
        ("ip2p_model", partitions.variant_partitions.get_partition_keys()),
        ("evaluation", partitions.evaluation_partitions.get_partition_keys()),
        ("t_tests", [None]),
        ("summary_report", [None]),
    ]


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
          f"{ {k: v for k, v in summary.items() if k != 'per_template'} }")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="materialise only these assets (and no data step)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PECN_PROFILE", "demo")
    os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").absolute()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    import dagster as dg

    from pecn_assets import partitions
    from pecn_assets.definitions import defs
    from pecn_assets.resources import PecnSettings

    settings = PecnSettings()
    profile = settings.get_profile()
    if profile.synthetic is not None and not args.only:
        ensure_synthetic_data(settings.data_path(), profile.synthetic)

    instance = dg.DagsterInstance.get()
    job = defs.resolve_implicit_global_asset_job_def()
    t_start = time.perf_counter()
    if not args.only:
        defs.resolve_job_def("observe_sources").execute_in_process(instance=instance)
    for asset, keys in plan(partitions):
        if args.only and asset not in args.only:
            continue
        for key in keys:
            t0 = time.perf_counter()
            result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(asset)],
                                            partition_key=key, raise_on_error=False)
            status = "ok" if result.success else "FAILED"
            print(f"[{time.perf_counter() - t_start:7.1f}s] {asset}{'/' + str(key) if key else ''}: "
                  f"{status} in {time.perf_counter() - t0:.1f}s (run {result.run_id})", flush=True)
            if not result.success:
                print(f"stopping: see the run in `dagster dev` (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
                return 1
    print(f"done in {time.perf_counter() - t_start:.1f}s. Open the UI: make ui  (http://127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
