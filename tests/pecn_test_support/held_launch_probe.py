"""A GPU step that trains nothing, for the test of what a killed step leaves behind
(tests/pecn_assets/test_killed_step.py): it claims simulated GPU device(s) as the real GPU assets
do and launches the `check` training child with K processes through `run_training`, which then
holds the launch (and the devices) for ten minutes (pecn_test_support/check_child.py).

    python -m pecn_test_support.held_launch_probe LOCK_DIR OUT_DIR K

runs one in-process run of the asset `held_launch` (pool `gpu`) in the instance at $DAGSTER_HOME,
tagged like the demo's runs.
"""


import sys

import dagster as dg

from pecn_assets.gpu import claimed_gpus, gpu_asset_args
from pecn_assets.pipes_child import LaunchOptions
from pecn_assets.pipes_launch import run_training
from pecn_assets.resources import PecnSettings
from pecn_assets.runs import in_process_tags
from pecn_test_support.check_child import MODULE, CheckJob

HOLD_S = 600.0


class HeldLaunchConfig(dg.Config):
    out_dir: str
    processes: int = 1


@dg.asset(**gpu_asset_args())
def held_launch(context: dg.AssetExecutionContext, config: HeldLaunchConfig,
                settings: PecnSettings) -> dg.MaterializeResult:
    """Claims the devices, launches a `check` child that holds the launch."""
    with claimed_gpus(context, settings, config.processes) as claim:
        return run_training(context, "check", CheckJob(LaunchOptions(config.out_dir), hold_s=HOLD_S),
                            num_processes=config.processes, claim=claim, cpu=True, threads_per_process=1,
                            module=MODULE)


def main(argv: "list[str]") -> int:
    lock_dir, out_dir, k = argv
    settings = PecnSettings(data_dir=out_dir, outputs_dir=out_dir, results_dir=out_dir, gpu_lock_dir=lock_dir,
                            gpu_devices=",".join(str(i) for i in range(int(k))))
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([held_launch], instance=instance, resources={"settings": settings},
                                run_config={"ops": {"held_launch": {"config": {"out_dir": out_dir,
                                                                               "processes": int(k)}}}},
                                tags=in_process_tags(), raise_on_error=False)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
