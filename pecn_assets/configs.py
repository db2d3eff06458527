"""Run config of the training assets: the trainers' hyper-parameters, with the profile's values as
defaults, so that the Launchpad shows (and lets a user change) exactly what a run will use.

`trainer_config_class(Pix2PixTrainConfig, profile.pix2pix_train, ...)` builds a `dagster.Config`
with one field per dataclass field (type and default from the profile's instance);
`apply(config, base)` turns the run's values back into the trainer's frozen dataclass. Fields the
platform sets itself (the seed of `ip2p_model` is its partition) are left out.

Bad settings are refused before any work, once. What Dagster's config schema can say (types,
the choices of `Literal` fields such as `mixed_precision`) the Launchpad and the CLI refuse before
a run starts. Ranges (`learning_rate > 0`, epochs >= 1, `train_processes >= 0`, ...: the trainers'
dataclasses check them) and more processes than the machine has devices are refused by
`training_settings`, a training step's first lines, before any claim, child or file, as a failure
that is not retried. (Pydantic bounds on these fields would be checked only when the step builds
its config, and that failure is retried: so the fields carry no bounds.)
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

import dagster as dg
import pydantic
from pydantic import Field

from pecn_assets.gpu import machine_devices

T = TypeVar("T")


class ProgressSourceConfig(dg.Config):
    """Where progress prompts take their percentage from."""

    use_progress_estimator: bool = Field(
        default=False, description="progress variants: prompt with PAC-Net's estimate (the "
        "`progress_estimates` input) instead of input_idx / num_frames")


class LaunchConfig(dg.Config):
    """How many training processes (one GPU each) a training step launches."""

    train_processes: int = Field(
        default=0, description="training processes of this step (>= 0), one claimed GPU each (accelerate "
        "data parallel; on a CPU machine K gloo processes); 0: the deployment's PecnSettings.train_processes")


class Pix2PixLaunchConfig(ProgressSourceConfig, LaunchConfig):
    """The prompts' progress source and the number of training processes."""


def launch_options(settings: Any, profile: Any, out_dir: Any) -> dict[str, Any]:
    """`pecn_assets.pipes_child.LaunchOptions` of a training step (as the child's JSON wants it)."""
    from pecn_ml.utils.cuda import allow_cpu_from_env

    return {"out_dir": str(out_dir), "resume": True, "require_cuda": bool(profile.requires_gpu),
            "allow_cpu": bool(settings.allow_cpu or allow_cpu_from_env()),
            "prune_training_state": bool(settings.prune_training_state)}


def trainer_config_class(name: str, defaults: Any, *, exclude: tuple[str, ...] = (),
                         base: type = dg.Config, doc: str = "") -> type:
    """A `dagster.Config` subclass whose fields are those of the dataclass instance `defaults`
    (types from its annotations, defaults = its values), minus `exclude`."""
    hints = typing.get_type_hints(type(defaults))
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(defaults):
        if f.name in exclude:
            continue
        value = getattr(defaults, f.name)
        fields[f.name] = (hints[f.name], Field(default=value, description=f"{type(defaults).__name__}."
                                               f"{f.name} (this profile: {value!r})"))
    model = pydantic.create_model(name, __base__=base, **fields)
    model.__doc__ = doc or f"Hyper-parameters of {type(defaults).__name__} (defaults: the profile's)."
    return model


def apply(config: dg.Config, base: T, **fixed: Any) -> T:
    """`base` with the run's values of every field `config` has, and `fixed` on top."""
    names = {f.name for f in dataclasses.fields(base)}
    values = {k: v for k, v in config.model_dump().items() if k in names}
    return dataclasses.replace(base, **values, **fixed)


def refused(message: str) -> dg.Failure:
    """The failure of a step whose settings can never work: not retried."""
    return dg.Failure(f"refused before any work (settings): {message}", allow_retries=False)


def training_settings(config: Any, base: T, settings: Any, **fixed: Any) -> tuple[T, int]:
    """A training step's first lines: (`base` with the run's values and `fixed`, the number of
    training processes: the run's, 0 = the deployment's), checked before any claim, child or file.
    A value out of range or more processes than the machine's devices fails without a retry."""
    if config.train_processes < 0:
        raise refused(f"train_processes must be >= 0 (0: the deployment's, {settings.train_processes}), "
                      f"got {config.train_processes}")
    k = config.train_processes or settings.train_processes
    try:
        train_config = apply(config, base, **fixed)
        devices = machine_devices(settings)
    except (TypeError, ValueError) as e:
        raise refused(str(e)) from None
    if devices and k > len(devices):
        raise refused(f"train_processes={k} needs {k} GPU devices, one per process; this machine offers "
                      f"{len(devices)} ({','.join(devices)})")
    return train_config, k


def used_values(train_config: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The hyper-parameters a run used, for its metadata (JSON-able)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in dataclasses.asdict(train_config).items() if k not in exclude}

