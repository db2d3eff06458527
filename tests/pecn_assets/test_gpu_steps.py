"""How a GPU step picks its device and when it refuses to run: the full profile without CUDA
fails at once unless the CPU is allowed; claims map to torch devices."""

from pathlib import Path

import dagster as dg
import pytest
import torch

from pecn_assets.configs import launch_options
from pecn_assets.gpu import check_cuda, torch_device
from pecn_assets.resources import PecnSettings
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import get_profile
from pecn_ml.utils.gpu_devices import DeviceClaim

def _settings(**kw) -> PecnSettings:
    return PecnSettings(data_dir="/d", outputs_dir="/o", results_dir="/r", **kw)


def test_full_profile_fails_fast_without_cuda_unless_the_cpu_is_allowed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    with pytest.raises(dg.Failure, match=r"ip2p_model \(profile full\) needs a CUDA GPU.*PECN_ALLOW_CPU=1") as e:
        check_cuda(_settings(), True, "ip2p_model (profile full)")
    assert e.value.allow_retries is False  # retrying cannot make a GPU appear
    assert check_cuda(_settings(allow_cpu=True), True, "x") == "cpu"
    assert check_cuda(_settings(), False, "x") == "cpu"  # the demo runs on the CPU


def test_the_environment_allows_the_cpu_only_through_the_deployment(monkeypatch):
    """PECN_ALLOW_CPU=1 reaches a step as `settings.allow_cpu`; the resource set to False wins."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PECN_ALLOW_CPU", "1")
    allowed = PecnSettings.for_deployment(Deployment.from_env({"PECN_ALLOW_CPU": "1"}), get_profile("full"))
    assert allowed.allow_cpu and check_cuda(allowed, True, "x") == "cpu"
    assert launch_options(allowed, get_profile("full"), "/o").allow_cpu is True
    refused = allowed.model_copy(update={"allow_cpu": False})
    with pytest.raises(dg.Failure, match="needs a CUDA GPU"):
        check_cuda(refused, True, "x")
    assert launch_options(refused, get_profile("full"), "/o").allow_cpu is False


def test_claims_map_to_torch_devices(monkeypatch):
    if not torch.cuda.is_available():  # simulated devices: the work stays on the CPU
        assert torch_device(DeviceClaim(devices=("1",))) == "cpu"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert torch_device(DeviceClaim(devices=("3",))) == "cuda:3"
    assert torch_device(DeviceClaim(devices=())) == "cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert torch_device(DeviceClaim(devices=("6",))) == "cuda:1"  # index among the visible ones
    with pytest.raises(dg.Failure, match="not visible"):
        torch_device(DeviceClaim(devices=("5",)))


def test_lock_dir_defaults_to_dagster_home(tmp_path):
    full = get_profile("full")
    at_home = PecnSettings.for_deployment(Deployment(dagster_home=str(tmp_path), outputs_dir="/o"), full)
    assert at_home.gpu_lock_path() == tmp_path / "gpu_locks"
    assert PecnSettings.for_deployment(Deployment(outputs_dir="/o"), full).gpu_lock_path() == Path("/o/gpu_locks")
    explicit = Deployment(gpu_lock_dir=str(tmp_path / "x"), dagster_home=str(tmp_path))
    assert PecnSettings.for_deployment(explicit, full).gpu_lock_path() == tmp_path / "x"
    assert _settings(gpu_lock_dir=str(tmp_path / "x")).gpu_lock_path() == tmp_path / "x"
    assert _settings().gpu_lock_path() == Path("/o/gpu_locks")
