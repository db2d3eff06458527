"""Per-run folders and tags of the steps that write files (training, evaluation, reports).

Every materialisation writes into a folder of its own, `{base}/runs/{dagster run id}`: a later
materialisation never changes a folder that an earlier one names, so every recorded checkpoint
path keeps hashing to its recorded sha256. A retried step (same run) finds its own folder again
and resumes from the checkpoints in it. Old folders are removed only by the explicit cleanup
(`python -m pecn_assets.cleanup`, job `cleanup_checkpoints`).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

RUNS = "runs"


def run_dir(base: Path, context: dg.AssetExecutionContext) -> Path:
    """`{base}/runs/{run id}`: this run's own folder under `base`."""
    return Path(base) / RUNS / context.run.run_id


def step_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Tags that tie a training run's tracker entry to its Dagster step."""
    tags = {"dagster_run_id": context.run.run_id, "dagster_asset": context.asset_key.to_user_string()}
    if context.has_partition_key:
        tags["dagster_partition"] = str(context.partition_key)
    return tags
