"""Delete the training-run folders that no materialisation refers to (pecn_assets/cleanup.py).

    DAGSTER_HOME=$PWD/dagster_home .venv/bin/python -m pecn_assets.tools.cleanup [--delete] [--include-superseded]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import dagster as dg

from pecn_assets.cleanup import cleanup
from pecn_assets.resources import PecnSettings
from pecn_ml.deployment import Deployment


def outputs_folder(deployment: Deployment) -> Path:
    """The deployment's outputs folder (its own, else its profile's)."""
    return PecnSettings.for_deployment(deployment).outputs_path()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delete", action="store_true", help="delete (default: a dry run that only lists)")
    parser.add_argument("--include-superseded", action="store_true",
                        help="also folders that only earlier materialisations name (by place or sha256)")
    parser.add_argument("--outputs", help="the outputs folder (default: the deployment's)")
    args = parser.parse_args(argv)
    outputs = Path(args.outputs) if args.outputs else outputs_folder(Deployment.from_env(os.environ))
    with dg.DagsterInstance.get() as instance:
        cleanup(instance, outputs, dry_run=not args.delete, include_superseded=args.include_superseded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
