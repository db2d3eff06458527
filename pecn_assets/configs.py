"""Run config of the training assets, generated from the trainers' frozen dataclasses with the
profile's values as defaults (the Launchpad shows what a run will use), and the checks of a
training step's settings before any work (`training_settings`: refused, not retried)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar, Union

import dagster as dg
import pydantic
from pydantic import Field

from pecn_assets.pipes_child import LaunchOptions
from pecn_ml.utils.gpu_devices import device_set

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


def launch_options(settings: Any, profile: Any, out_dir: Any, resume: Union[bool, str] = True) -> LaunchOptions:
    """The child's `LaunchOptions` of a training step."""
    return LaunchOptions(out_dir=str(out_dir), resume=resume, require_cuda=bool(profile.requires_gpu),
                         allow_cpu=bool(settings.allow_cpu), prune_training_state=bool(settings.prune_training_state))


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
    names = {f.name for f in dataclasses.fields(base)}
    try:
        train_config = dataclasses.replace(base, **{n: v for n, v in config.model_dump().items() if n in names},
                                           **fixed)
        devices = device_set(settings.gpu_devices)
    except (TypeError, ValueError) as e:
        raise refused(str(e)) from None
    if devices and k > len(devices):
        raise refused(f"train_processes={k} needs {k} GPU devices, one per process; this machine offers "
                      f"{len(devices)} ({','.join(devices)})")
    return train_config, k


def used_values(train_config: Any) -> dict[str, Any]:
    """The hyper-parameters a run used, for its metadata (JSON-able)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in dataclasses.asdict(train_config).items()}

