"""Declarative automation: which partitions the platform rebuilds by itself, and when.

- `ip2p_model`, `pacnet` (`Automation.retrain`): at the weekly tick (cron `PECN_SWEEP_CRON`,
  default Saturdays 03:00 UTC) the partitions that are missing (a new training seed, a partition
  never trained) or stale: an upstream's data version changed (base weights' sha, annotations,
  frame cache) or the asset's code version changed, which includes the profile's training config
  (`config_code_version`), since the partition was last requested or materialised. Unchanged
  partitions are not retrained: training is deterministic, the same inputs give the same numbers.
- `evaluation`, `progress_estimates` (`Automation.follow`): a partition follows its model as soon
  as that model partition gets a new data version (a tick after), and is otherwise rebuilt at the
  weekly tick like the models (missing, or its code version changed). Requested in the same tick
  as its model, it shares the model's request: the automation sensor turns a tick's requests of
  several partitions into one asset backfill (its `emit_backfills` default), whose daemon runs
  each evaluation after its model.
- `frame_cache` (`Automation.cache`): eager (rebuilt at once when `filtered_annotations` or
  `raw_videos` get a new data version, missing partitions built) and when its code version changes.

Nothing of this runs unless the automation sensor (`pecn_automation`, pecn_assets/jobs.py) is on
(and, for backfills, the daemon: `make ui` runs it).
`progress_estimates` is read by `ip2p_model` and `evaluation` only when a run's config says
`use_progress_estimator` (off by default, the only setting automation uses), so neither waits
for it nor is rebuilt when it changes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Mapping

import dagster as dg

from pecn_ml.utils.files import sha256_json

SWEEP_CRON_ENV = "PECN_SWEEP_CRON"
DEFAULT_SWEEP_CRON = "0 3 * * 6"            # Saturdays 03:00 UTC
OPTIONAL_INPUTS = dg.AssetSelection.keys("progress_estimates")

AC = dg.AutomationCondition


def backfill_cron(env: Mapping[str, str] = os.environ) -> str:
    """The cron of the weekly backfill (`PECN_SWEEP_CRON`, default weekly), checked so a typo fails at load."""
    cron = env.get(SWEEP_CRON_ENV, "").strip() or DEFAULT_SWEEP_CRON
    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError as e:
        raise ValueError(f"{SWEEP_CRON_ENV}={cron!r} is not a valid cron schedule: {e}") from None
    return cron


def config_code_version(code: str, config) -> str:
    """`code` plus a short hash of a training config (a dataclass): a changed config makes the
    asset's code version change, so automation retrains it and the UI marks it unsynced."""
    return f"{code}-{sha256_json(asdict(config))[:12]}"


@dataclass(frozen=True)
class Automation:
    """The automation conditions of one deployment (its weekly cron)."""

    cron: str = DEFAULT_SWEEP_CRON

    def _ready(self) -> dg.AutomationCondition:
        """Not while it or an upstream runs; not before every upstream it needs exists. (A partition
        held back at the weekly tick stays stale and goes at the next one, or by hand.)"""
        return (~AC.any_deps_missing().ignore(OPTIONAL_INPUTS) & ~AC.any_deps_in_progress()
                & ~AC.in_progress())

    def _weekly(self, stale: dg.AutomationCondition) -> dg.AutomationCondition:
        """At the weekly tick: missing, or `stale` became true since the last request or update."""
        return (AC.cron_tick_passed(self.cron) & (AC.missing() | stale.since_last_handled())).with_label(
            f"weekly({self.cron}): missing or stale")

    def retrain(self) -> dg.AutomationCondition:
        """Missing or stale partitions (an upstream's data version or the code version changed), at the weekly tick."""
        stale = (AC.any_deps_match(AC.data_version_changed()).ignore(OPTIONAL_INPUTS).with_label(
            "any_deps_data_version_changed") | AC.code_version_changed()).with_label("stale")
        return (self._weekly(stale) & self._ready()).with_label("retrain_weekly")

    def follow(self, model: str) -> dg.AutomationCondition:
        """The partitions whose `model` partition got a new data version (or is requested in the same
        run); missing ones and a changed code version at the weekly tick. Other upstream changes
        reach it through the model, which they retrain."""
        model_changed = AC.any_deps_match(
            (AC.data_version_changed() & ~AC.executed_with_root_target()) | AC.will_be_requested()
        ).allow(dg.AssetSelection.keys(model)).with_label(f"{model}_changed")
        return ((model_changed.since_last_handled() | self._weekly(AC.code_version_changed())) & self._ready()
                ).with_label(f"follow_{model}")

    def cache(self) -> dg.AutomationCondition:
        """Eager on its upstreams' data versions (a rebuild with the same version changes nothing), and
        rebuilt when its code version changes."""
        changed = (AC.any_deps_match(AC.data_version_changed() | AC.will_be_requested()) | AC.code_version_changed()
                   ).with_label("any_deps_data_version_or_code_version_changed")
        return AC.eager().replace("any_deps_updated", changed)
