"""require_cuda: fail fast without a GPU unless the CPU was explicitly allowed; torch_build: which
build `make setup` installed."""

import pytest
import torch

from pecn_ml.deployment import Deployment
from pecn_ml.utils.cuda import CudaRequiredError, require_cuda, torch_build


def test_without_cuda_it_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CudaRequiredError) as e:
        require_cuda(False, "ip2p_model (full profile)")
    message = str(e.value)
    assert "ip2p_model (full profile) needs a CUDA GPU" in message
    assert "PECN_ALLOW_CPU=1" in message
    if torch.version.cuda is None:
        assert "CPU-only build" in message


def test_an_empty_cuda_visible_devices_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(CudaRequiredError, match="CUDA_VISIBLE_DEVICES is set but empty"):
        require_cuda(False, "pacnet")


def test_opt_in_allows_the_cpu_and_cuda_passes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert require_cuda(True, "pacnet") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert require_cuda(False, "pacnet") == "cuda"


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                            ("0", False), ("", False), ("no", False)])
def test_opt_in_from_the_environment(value, expected):
    assert Deployment.from_env({"PECN_ALLOW_CPU": value}).allow_cpu is expected
    assert Deployment.from_env({}).allow_cpu is False


def test_torch_build_says_cpu_or_cuda_and_its_version(monkeypatch):
    line = torch_build()
    assert line.startswith(f"torch {torch.__version__}: ")
    assert ("CPU build" in line) == (torch.version.cuda is None)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    assert torch_build().endswith(": CUDA 12.8 build, 2 GPUs visible (NVIDIA H100 80GB HBM3)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ": CUDA 12.8 build, no GPU visible (" in torch_build()
