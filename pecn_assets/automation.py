"""Declarative automation: which partitions the platform rebuilds by itself, and when.

`ip2p_model` and `pacnet` retrain at the weekly tick when missing or stale (an upstream's data
version or the code version, which includes the training config, changed); `evaluation` and
`progress_estimates` follow their model; `frame_cache` is eager. Only while the `pecn_automation`
sensor (pecn_assets/jobs.py) and, for backfills, the daemon run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import dagster as dg

from pecn_ml.deployment import DEFAULT_SWEEP_CRON
from pecn_ml.utils.files import sha256_json

OPTIONAL_INPUTS = dg.AssetSelection.keys("progress_estimates")

AC = dg.AutomationCondition


def backfill_cron(cron: str = DEFAULT_SWEEP_CRON) -> str:
    """`cron`, checked so that a typo fails when the definitions load."""
    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError as e:
        raise ValueError(f"PECN_SWEEP_CRON={cron!r} is not a valid cron schedule: {e}") from None
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
