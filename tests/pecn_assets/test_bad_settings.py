"""Bad settings are refused before any work, once: the config schema (types, the choices of
`mixed_precision` / `lr_scheduler`) before a run starts; ranges and more processes than devices in
the training steps' first lines, before any claim, child or file, with no retry (the GPU retry
policy would wait 30 s before a retry: these tests take seconds). `PECN_GPU_DEVICES` is checked
when the definitions load. What a retry cannot fix (a full disk, a failed verification) is not
retried either; a busy device and a killed child still are."""

import errno
import sys
import time
import typing
from pathlib import Path

import dagster as dg
import pytest

from pecn_assets.build import build_assets, build_definitions
from pecn_assets.gpu import claimed_gpus, gpu_asset_args, not_retried_when_hopeless
from pecn_assets.partitions import Partitions, add_seeds
from pecn_assets.pipes_launch import run_pipes_command
from pecn_assets.resources import PecnSettings, PretrainedModels, Tracking
from pecn_ml.artifacts import ArtifactChanged
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import get_profile
from pecn_ml.utils.failures import NOT_RETRIED_MARKER
from pecn_ml.utils.gpu_devices import claim_devices


class NoInputs(dg.ConfigurableIOManager):
    """Upstream artifacts that were never made (empty handles of the right type): a refused step
    must not read them."""

    def load_input(self, context):
        kind = context.dagster_type.typing_type
        return None if type(None) in typing.get_args(kind) else object.__new__(kind)

    def handle_output(self, context, obj):
        raise AssertionError("a refused step produced an output")


@pytest.fixture(scope="module")
def smoke_assets():
    return build_assets(Partitions.build(get_profile("smoke"), (0,)))


def _settings(tmp_path: Path, devices: str = "0", **kw) -> PecnSettings:
    return PecnSettings(data_dir=str(tmp_path / "data"), outputs_dir=str(tmp_path / "out"),
                        results_dir=str(tmp_path / "res"), gpu_lock_dir=str(tmp_path / "locks"), gpu_devices=devices,
                        **kw)


def _instance() -> dg.DagsterInstance:
    """An in-memory instance with training seed 0 (the seed partitions live in the instance)."""
    instance = dg.DagsterInstance.ephemeral()
    add_seeds(instance, (0,))
    return instance


def _step_events(result) -> list[str]:
    """The step's lifecycle: start, retries, the end."""
    return [e.event_type_value for e in result.all_events if e.event_type_value in
            ("STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_FAILURE", "STEP_SUCCESS")]


def _failure(result) -> dg.Failure:
    (event,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return event.event_specific_data.error.message


@pytest.mark.parametrize("asset, partition, config, message", [
    ("ip2p_model", "0|next1", {"learning_rate": -1.0}, "learning_rate must be > 0"),
    ("ip2p_model", "0|next1", {"num_train_epochs": 0}, "num_train_epochs must be >= 1"),
    ("ip2p_model", "0|next1", {"train_processes": -1}, "train_processes must be >= 0"),
    ("ip2p_model", "0|next1", {"train_processes": 2}, "train_processes=2 needs 2 GPU devices"),
    ("pacnet", "regression", {"lr": -1.0}, "lr must be > 0"),
    ("pacnet", "regression", {"train_processes": 3}, "this machine offers 1 (0)"),
])
def test_a_bad_setting_fails_the_step_once_before_any_work(smoke_assets, tmp_path, asset, partition, config,
                                                            message):
    t0 = time.monotonic()
    result = dg.materialize(smoke_assets, selection=[asset], partition_key=partition,
                            instance=_instance(), raise_on_error=False,
                            resources={"settings": _settings(tmp_path), "tracking": Tracking(),
                                       "models": PretrainedModels(), "io_manager": NoInputs()},
                            run_config={"ops": {asset: {"config": config}}})
    assert not result.success
    assert _step_events(result) == ["STEP_START", "STEP_FAILURE"]  # no STEP_UP_FOR_RETRY
    assert message in _failure(result) and "refused before any work" in _failure(result)
    assert not (tmp_path / "locks").exists() and not (tmp_path / "out").exists()  # no claim, no file
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("asset, config", [("ip2p_model", {"mixed_precision": "fp32"}),
                                           ("ip2p_model", {"lr_scheduler": "cosine_annealing"}),
                                           ("ip2p_model", {"learning_rate": "fast"}),
                                           ("pacnet", {"mixed_precision": "int8"})])
def test_the_config_schema_refuses_types_and_choices_before_a_run(smoke_assets, tmp_path, asset, config):
    instance = _instance()
    with pytest.raises(dg.DagsterInvalidConfigError, match=str(next(iter(config.values())))):
        dg.materialize(smoke_assets, selection=[asset], instance=instance,
                       partition_key="0|next1" if asset == "ip2p_model" else "regression",
                       resources={"settings": _settings(tmp_path), "tracking": Tracking(),
                                  "models": PretrainedModels(), "io_manager": NoInputs()},
                       run_config={"ops": {asset: {"config": config}}})
    assert instance.get_runs() == []  # refused before a run was made


@pytest.mark.parametrize("value", ["a,b", "-1", "0,,1", "GPU-0f1e"])
def test_pecn_gpu_devices_takes_device_indices_only(value):
    with pytest.raises(ValueError, match=f"PECN_GPU_DEVICES={value!r}"):
        Deployment.from_env({"PECN_PROFILE": "smoke", "PECN_GPU_DEVICES": value})
    for good in (" 0, 2", ""):
        defs = build_definitions(Deployment.from_env({"PECN_PROFILE": "smoke", "PECN_GPU_DEVICES": good}))
        assert defs.resources["settings"].gpu_devices == good


# --- what is retried and what is not ---------------------------------------------------------------

def _gpu_step(body, retry: dg.RetryPolicy = None):
    args = gpu_asset_args()
    if retry is not None:
        args["retry_policy"] = retry

    @dg.asset(name="gpu_step", **args)
    @not_retried_when_hopeless
    def gpu_step(context: dg.AssetExecutionContext, settings: PecnSettings) -> None:
        """A GPU step whose body fails."""
        body(context, settings)

    return gpu_step


def _run(step, tmp_path, **settings) -> dg.ExecuteInProcessResult:
    return dg.materialize([step], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
                          resources={"settings": _settings(tmp_path, **settings)})


def _disk_full(context, settings):
    raise OSError(errno.ENOSPC, "No space left on device", str(settings.outputs_path()))


def _changed(context, settings):
    raise ArtifactChanged("checkpoint model/unet/diffusion_pytorch_model.safetensors: sha256 abc != def")


@pytest.mark.parametrize("body, reason", [(_disk_full, "the disk is full"),
                                          (_changed, "a file failed its sha256 verification")])
def test_a_full_disk_or_a_failed_verification_is_not_retried(tmp_path, body, reason):
    result = _run(_gpu_step(body), tmp_path)  # the real GPU_RETRY: a retry would wait 30 s
    assert _step_events(result) == ["STEP_START", "STEP_FAILURE"]
    assert f"{reason}, so the step is not retried" in _failure(result)


def test_a_busy_device_is_still_retried(tmp_path):
    def claim(context, settings):
        with claimed_gpus(context, settings, 1):
            pass

    step = _gpu_step(claim, dg.RetryPolicy(max_retries=1))
    with claim_devices(1, tmp_path / "locks", devices=["0"]):  # someone else holds GPU 0
        result = _run(step, tmp_path, gpu_claim_timeout_s=0.2)
    assert _step_events(result) == ["STEP_START", "STEP_UP_FOR_RETRY", "STEP_RESTARTED", "STEP_FAILURE"]


@pytest.mark.parametrize("script, retried", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", True),            # preempted / OOM-killed
    (f"import sys; print('{NOT_RETRIED_MARKER} the disk is full: OSError', file=sys.stderr); sys.exit(1)", False),
])
def test_a_child_failure_is_retried_unless_the_child_says_a_retry_cannot_help(tmp_path, script, retried):
    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
    def launch(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return run_pipes_command(context, [sys.executable, "-c", script]).get_materialize_result()

    result = dg.materialize([launch], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert _step_events(result).count("STEP_UP_FOR_RETRY") == (1 if retried else 0)
    assert ("not retried" in _failure(result)) is not retried


def test_the_child_announces_a_failure_no_retry_can_fix(capsys, tmp_path):
    from pecn_assets import pipes_child
    from pecn_test_support.check_child import CheckJob

    def full(job, log):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        pipes_child.main(["check", "--config", '{"options": {"out_dir": "%s"}}' % tmp_path],
                         trainers={"check": (CheckJob, full)})
    assert f"{NOT_RETRIED_MARKER} the disk is full: OSError" in capsys.readouterr().err
