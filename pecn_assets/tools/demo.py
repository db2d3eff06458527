"""The main job (`make demo`): make the demo data, then materialise the whole asset graph into the
Dagster instance at $DAGSTER_HOME (default ./dagster_home), so that `make ui` shows its runs.

    python -m pecn_assets.tools.demo [--only ASSET ...] [--summary]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg

from pecn_assets.tools.materialise import materialize_all
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import get_profile


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


def prediction_summary(instance: dg.DagsterInstance, defs: dg.Definitions) -> str:
    """The table the demo ends with (`pecn_ml.report.prediction_table`) of the evaluations and
    t-tests in `instance`, read back through the I/O manager."""
    from pecn_assets.assets.evaluation import results_by_model
    from pecn_ml.report import prediction_table

    partitions_def = defs.resolve_asset_graph().get(dg.AssetKey("evaluation")).partitions_def
    keys = partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    evaluation = {k: defs.load_asset_value("evaluation", partition_key=k, instance=instance) for k in keys}
    return prediction_table(results_by_model(evaluation), defs.load_asset_value("t_tests", instance=instance).rows())


def _run(deployment: Deployment, args: argparse.Namespace, t0: float) -> int:
    from pecn_assets.build import build_definitions
    from pecn_assets.gpu_pool import size_gpu_pool

    defs = build_definitions(deployment)
    settings, profile = defs.resources["settings"], get_profile(deployment.profile)
    if profile.synthetic is not None and not args.only and not args.summary:
        ensure_synthetic_data(settings.data_path(), profile.synthetic)
    with dg.DagsterInstance.from_config(deployment.dagster_home) as instance:
        if args.summary:
            print(prediction_summary(instance, defs))
            return 0
        print(size_gpu_pool(instance, settings, deployment).line(), flush=True)
        if not materialize_all(instance, defs, only=args.only, log=lambda line: print(line, flush=True)):
            print(f"stopped at a failed run: see it in `make ui` (DAGSTER_HOME={deployment.dagster_home})")
            return 1
        print(f"demo done in {time.perf_counter() - t0:.1f}s (data and graph)\n")
        if args.only:
            return 0
        print("Model vs latent copy (its own VAE's round trip of frame 20), copy-frame and the VAE ceiling; "
              "motion PSNR = where the frame changes; diff = model - latent copy (paired, p):")
        print(prediction_summary(instance, defs))
    print("Open the UI: make ui  (http://127.0.0.1:3000)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="materialise only these assets (and no data step)")
    parser.add_argument("--summary", action="store_true",
                        help="only print the prediction table of the evaluations already materialised")
    args = parser.parse_args(argv)
    deployment = Deployment.from_env(os.environ)
    home = Path(deployment.dagster_home or "dagster_home").absolute()
    home.mkdir(parents=True, exist_ok=True)
    return _run(replace(deployment, dagster_home=str(home)), args, time.perf_counter())


if __name__ == "__main__":
    sys.exit(main())
