"""Partitions shared by assets, jobs and sensors, built once from the profile and the seeds:
`resolution` (frame_cache), `head` (pacnet), `model` (ip2p_model and evaluation: keys
`{seed}|{variant}`, the seed dimension dynamic, so seeds are added in the UI without a restart)
and `eval_set` (copy_frame_baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from pecn_ml.profiles import Profile
from pecn_ml.variants import EVAL_SETS, VARIANTS

HEADS = ("regression", "classification")
SEED_PARTITIONS = "training_seed"   # the dynamic partitions of the seed dimension (stored in the instance)
SEEDS_METADATA = "pecn/seeds"       # the Definitions' metadata: the deployment's seeds


@dataclass(frozen=True)
class Partitions:
    """Every partitions definition of one deployment (profile + the training seeds it starts with)."""

    profile: Profile
    seeds: tuple[int, ...]
    resolution: dg.StaticPartitionsDefinition
    head: dg.StaticPartitionsDefinition
    model: dg.MultiPartitionsDefinition
    eval_set: dg.StaticPartitionsDefinition

    @classmethod
    def build(cls, profile: Profile, seeds: tuple[int, ...]) -> "Partitions":
        """The partitions of `profile` with training seeds `seeds` (at least one, no repeats)."""
        seeds = tuple(int(s) for s in seeds)
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct integers >= 0, at least one; got {seeds}")
        resolutions = [str(r) for r in profile.resolutions]
        for what, r in (("pix2pix", profile.pix2pix_resolution), ("pacnet", profile.pacnet_resolution)):
            if str(r) not in resolutions:
                raise ValueError(f"profile {profile.name}: {what}_resolution {r} is not one of its frame-cache "
                                 f"resolutions {resolutions}")
        return cls(
            profile=profile, seeds=seeds,
            resolution=dg.StaticPartitionsDefinition(resolutions),
            head=dg.StaticPartitionsDefinition(list(HEADS)),
            model=dg.MultiPartitionsDefinition({
                "seed": dg.DynamicPartitionsDefinition(name=SEED_PARTITIONS),
                "variant": dg.StaticPartitionsDefinition(list(VARIANTS))}),
            eval_set=dg.StaticPartitionsDefinition(list(EVAL_SETS)),
        )

    def frame_cache_at(self, resolution: int) -> dict[str, dg.AssetIn]:
        """The `ins` of an asset whose every partition reads the frame cache partition of one resolution."""
        return {"frame_cache": dg.AssetIn(partition_mapping=dg.SpecificPartitionsPartitionMapping([str(resolution)]))}


def add_seeds(instance: dg.DagsterInstance, seeds) -> list[str]:
    """Add the training `seeds` that `instance` lacks to the seed partitions; the ones added."""
    missing = [str(s) for s in seeds if not instance.has_dynamic_partition(SEED_PARTITIONS, str(s))]
    if missing:
        instance.add_dynamic_partitions(SEED_PARTITIONS, missing)
    return missing


def deployment_seeds(defs: dg.Definitions) -> tuple[int, ...]:
    """The training seeds a `build_definitions` deployment starts with (its `pecn/seeds` metadata)."""
    return tuple(int(s) for s in defs.metadata[SEEDS_METADATA].value.split(","))


def seed_and_variant(key: str | dg.MultiPartitionKey) -> tuple[int, str]:
    """(seed, variant) of a `model` key such as `0|next1`; a seed that is no integer >= 0 fails at once."""
    dims = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else dict(
        zip(("seed", "variant"), str(key).split("|")))
    if not dims["seed"].isdigit():
        raise dg.Failure(f"partition {key}: training seed {dims['seed']!r} is not an integer >= 0; delete it "
                         f"from the {SEED_PARTITIONS} partitions and add a number", allow_retries=False)
    return int(dims["seed"]), dims["variant"]
