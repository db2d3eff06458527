"""Partitions shared by assets, jobs and schedules."""

from __future__ import annotations

import os

import dagster as dg

from pecn_ml.profiles import get_profile
from pecn_ml.variants import EVAL_SETS, VARIANTS

PROFILE = get_profile()


def _resolutions() -> list[str]:
    raw = os.environ.get("PECN_RESOLUTIONS")
    values = raw.split(",") if raw else [str(r) for r in PROFILE.resolutions]
    return [v.strip() for v in values if v.strip()]


RESOLUTIONS = _resolutions()
resolution_partitions = dg.StaticPartitionsDefinition(RESOLUTIONS)
head_partitions = dg.StaticPartitionsDefinition(["regression", "classification"])
variant_partitions = dg.StaticPartitionsDefinition(list(VARIANTS))
eval_set_partitions = dg.StaticPartitionsDefinition(list(EVAL_SETS))
evaluation_partitions = dg.MultiPartitionsDefinition(
    {"eval_set": eval_set_partitions, "variant": variant_partitions}
)


def from_resolution(resolution: int) -> dg.SpecificPartitionsPartitionMapping:
    """Every downstream partition reads the frame cache partition of one resolution."""
    return dg.SpecificPartitionsPartitionMapping([str(resolution)])
