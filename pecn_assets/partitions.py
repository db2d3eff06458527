"""Partitions shared by assets, jobs and schedules, built once from the profile and the seeds.

- `resolution` (frame_cache): the profile's frame-cache resolutions;
- `head` (pacnet): regression, classification;
- `model` (ip2p_model and evaluation): training seed x variant, keys `{seed}|{variant}` (Dagster
  orders the dimensions by name), e.g. `0|next1`. An evaluation partition reads the checkpoint of
  the same key and scores it on every eval set;
- `eval_set` (copy_frame_baseline): basic, backforth.

Nothing here reads the environment: `pecn_assets.definitions` picks the profile and seeds once.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from pecn_ml.profiles import Profile
from pecn_ml.variants import EVAL_SETS, VARIANTS

HEADS = ("regression", "classification")


@dataclass(frozen=True)
class Partitions:
    """Every partitions definition of one deployment (profile + training seeds)."""

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
                "seed": dg.StaticPartitionsDefinition([str(s) for s in seeds]),
                "variant": dg.StaticPartitionsDefinition(list(VARIANTS))}),
            eval_set=dg.StaticPartitionsDefinition(list(EVAL_SETS)),
        )

    def frame_cache_at(self, resolution: int) -> dg.SpecificPartitionsPartitionMapping:
        """Every downstream partition reads the frame cache partition of one resolution."""
        return dg.SpecificPartitionsPartitionMapping([str(resolution)])

    def model_keys(self) -> list[str]:
        return self.model.get_partition_keys()


def model_key(seed: int, variant: str) -> dg.MultiPartitionKey:
    """The `ip2p_model` / `evaluation` partition of one training seed and variant."""
    return dg.MultiPartitionKey({"seed": str(seed), "variant": variant})


def seed_and_variant(key: str | dg.MultiPartitionKey) -> tuple[int, str]:
    """(seed, variant) of a `model` partition key such as `0|next1`."""
    dims = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else dict(
        zip(("seed", "variant"), str(key).split("|")))
    return int(dims["seed"]), dims["variant"]
