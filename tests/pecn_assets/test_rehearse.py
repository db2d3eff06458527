"""`make rehearse` without running it: its own files are left out of the bytes written, and the
graph its steps materialise uses the local model folders (the policy and report: tests/pecn_ml/test_rehearsal.py)."""

from pathlib import Path

import dagster as dg
import pytest

from pecn_assets.build import build_definitions
from pecn_assets.partitions import add_seeds, deployment_seeds
from pecn_assets.tools import rehearse
from pecn_assets.tools.materialise import plan
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import rehearsal_profile
from pecn_ml.rehearsal import GIB, cpu_adjustments


def test_bytes_written_leaves_out_the_rehearsals_own_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"x" * 100)
    (tmp_path / rehearse.LOGS_DIR).mkdir()
    (tmp_path / rehearse.LOGS_DIR / "a.log").write_bytes(b"x" * 1000)
    (tmp_path / (rehearse.HOME_PREFIX + "abc")).mkdir()
    (tmp_path / (rehearse.HOME_PREFIX + "abc") / "runs.db").write_bytes(b"x" * 1000)
    assert rehearse.tree_bytes([tmp_path, tmp_path / "missing"], rehearse._excluded) == 100


@pytest.mark.parametrize("cuda", [False, True])
def test_the_rehearsal_graph_builds_with_local_model_folders(tmp_path, cuda):
    """The definitions the steps materialise: every asset of the full graph, one frame-cache
    partition, the local folders in place of the hub names."""
    profile, _ = cpu_adjustments(rehearsal_profile(), cuda=cuda, memory_bytes=64 * GIB, training_bytes=GIB)
    defs = rehearse.rehearsal_definitions(profile, tmp_path / "models")
    instance = dg.DagsterInstance.ephemeral()
    add_seeds(instance, deployment_seeds(defs))
    steps = plan(defs, instance)
    assert sorted(a for a, _ in steps) == sorted(a for a, _ in plan(build_definitions(Deployment()), instance))
    assert dict(steps)["frame_cache"] == ["224"] and len(dict(steps)["ip2p_model"]) == 6  # six variants
    models = defs.resources["models"]
    assert models.pix2pix == str((tmp_path / "models" / "instruct-pix2pix").absolute())
    assert models.clip_text.endswith("clip-vit-base-patch32") and models.resnet.endswith("resnet-50")


def test_the_steps_may_use_the_cpu_only_without_cuda(tmp_path, monkeypatch):
    """The rehearsal keeps its own folders and seeds, takes the environment's devices, and lets its
    GPU steps run on the CPU (settings.allow_cpu) only where there is no CUDA."""
    monkeypatch.setenv("PECN_GPU_DEVICES", "0")
    monkeypatch.setenv("PECN_OUTPUTS_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PECN_SEEDS", "0,1,2")
    deployment = rehearse.rehearsal_deployment(tmp_path / "home", cuda=False)
    assert (deployment.allow_cpu, deployment.gpu_devices, deployment.outputs_dir, deployment.seeds) == (True, "0", "", ())
    assert not rehearse.rehearsal_deployment(tmp_path / "home", cuda=True).allow_cpu
    settings = rehearse.rehearsal_definitions(rehearsal_profile(), tmp_path / "models", deployment).resources["settings"]
    assert settings.allow_cpu and settings.outputs_path() == rehearse.PecnSettings.for_profile(
        rehearsal_profile()).outputs_path()
    assert Path(settings.gpu_lock_dir) == tmp_path / "home" / "gpu_locks"
