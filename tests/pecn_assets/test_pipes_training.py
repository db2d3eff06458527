"""Training through Dagster Pipes: the launch command, and the child run under a throw-away asset
(K = 1 and K = 2 over gloo on a small synthetic set with tiny models; the K = 2 launch check).
The real assets (ip2p_model, pacnet) with K = 1 and K = 2: test_multi_process_training.py."""

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from pecn_assets.pipes_child import LaunchOptions, PacNetJob, Pix2PixJob
from pecn_assets.pipes_launch import child_command, child_env, for_this_launch, run_training
from pecn_ml.artifacts import FilteredAnnotations, FrameCacheRef, Weights
from pecn_ml.model_cards import BaseWeights, CardContext
from pecn_ml.models.pacnet import PacNetConfig
from pecn_ml.profiles import PROFILES, get_profile
from pecn_ml.training.tracking import TrackingConfig
from pecn_ml.utils.codec import CodecError, from_json, to_json
from pecn_ml.utils.gpu_devices import claim_devices
from pecn_test_support.check_child import MODULE as CHECK_MODULE
from pecn_test_support.check_child import CheckJob

# One label key per task (tasks.json), so the filter finds every task.
TEMPLATES = ("Pushing something from left to right", "Dropping something onto something",
             "Covering something with something",
             "Letting something roll up a slanted surface, so it rolls back down")
R = 32


def test_commands_for_one_and_several_processes():
    one = child_command("pix2pix", "{}", 1, python="py")
    assert one == ["py", "-m", "pecn_assets.pipes_child", "pix2pix", "--config", "{}"]
    gpu = child_command("pix2pix", "{}", 4, python="py", port=29611)
    assert gpu[:3] == ["py", "-m", "accelerate.commands.launch"] and "--multi_gpu" in gpu
    assert gpu[gpu.index("--num_processes") + 1] == "4"
    assert gpu[gpu.index("--main_process_port") + 1] == "29611"
    assert gpu[-5:] == one[1:]
    cpu = child_command("pacnet", "{}", 2, cpu=True, python="py")
    assert cpu[:6] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cpu[-5:] == ["-m", "pecn_assets.pipes_child", "pacnet", "--config", "{}"]
    assert child_env({"CUDA_VISIBLE_DEVICES": "2,3"}, cpu=True, threads_per_process=1) == {
        "CUDA_VISIBLE_DEVICES": "2,3", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    with pytest.raises(ValueError):
        child_command("pix2pix", "{}", 0)


def test_jobs_cross_the_boundary_as_their_typed_dataclasses():
    """Every profile's trainer configs inside the jobs, through the one codec: equal after the round
    trip; an unknown field or a wrong type is refused, the field named."""
    annotations = FilteredAnnotations("/a", {"train_filtered.json": "ab" * 32}, "v1")
    cache, base = FrameCacheRef("/d", 32, "c" * 64), Weights("pix2pix_base", "/w", "d" * 64, sha256_scheme="manifest")
    card = CardContext("run", {"annotations": "v1"}, (BaseWeights("pix2pix_base", "stand-in"),), {"variant": "next1"})
    tracking = TrackingConfig(backend="mlflow", run_name="r", tags={"dagster/run_id": "run"})
    jobs = []
    for profile in map(get_profile, PROFILES):
        jobs.append(Pix2PixJob(annotations, cache, base, "next1", 0, profile.pix2pix_train, LaunchOptions("o"),
                               progress_estimates={"12": 40}, tracking=tracking, card=card))
        jobs.append(PacNetJob(annotations, cache, PacNetConfig(head="classification"), profile.pacnet_train,
                              LaunchOptions("o", resume="auto", launcher_pid=7, launcher_start="99"), card=card))
    for job in (*jobs, for_this_launch(jobs[0])):
        assert from_json(type(job), to_json(job)) == job
    text = json.loads(to_json(jobs[0]))
    with pytest.raises(CodecError, match="unknown Pix2PixJob fields"):
        from_json(Pix2PixJob, json.dumps({**text, "lr": 1}))
    bad = {**text, "train_config": {**text["train_config"], "learning_rate": "fast"}}
    with pytest.raises(CodecError, match=r"Pix2PixJob\.train_config\.learning_rate: expected float"):
        from_json(Pix2PixJob, json.dumps(bad))
    assert for_this_launch(jobs[0]).options.launcher_pid > 0 and for_this_launch(jobs[0]).options.launch_id


def test_the_child_takes_its_rank_from_the_launcher(monkeypatch):
    from pecn_ml.utils.accel import process_rank

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert process_rank() == (0, 0, 1)  # a plain process: rank 0 of 1
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    assert process_rank() == (1, 1, 2)


# --- the child under Dagster --------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pecn_assets.assets.data import filtered_artifact
    from pecn_assets.resources import PecnSettings
    from pecn_ml.artifacts import FrameCacheRef, Weights
    from pecn_ml.data.annotations import FilterConfig, filter_annotations, load_filtered
    from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache
    from pecn_ml.data.synthetic import SyntheticConfig, write_synthetic_ssv2
    from pecn_ml.models.tiny import build_tiny_models
    from pecn_ml.models.weights import weights_sha256

    root = tmp_path_factory.mktemp("pipes")
    data_dir = root / "data"
    write_synthetic_ssv2(data_dir, SyntheticConfig(
        templates=TEMPLATES, task_train_per_template=2, task_val_per_template=1,
        other_train_per_template=0, other_val_per_template=0, num_test=0, short_fraction=0.0,
        min_width=64, max_width=96))
    filter_annotations(data_dir, FilterConfig())
    ann = data_dir / "annotations"
    ids = sorted({e["id"] for name in ("train_filtered.json", "val_filtered.json")
                  for e in load_filtered(ann / name)})
    build_frame_cache(data_dir, R, ids)
    tiny = build_tiny_models(root / "tiny-models")
    settings = PecnSettings(data_dir=str(data_dir), outputs_dir=str(root / "out"), results_dir=str(root / "res"))
    version = open_frame_cache(data_dir, R).version
    return SimpleNamespace(root=root, data_dir=data_dir, ann=ann, tiny=tiny,
                           annotations=filtered_artifact(settings),
                           frame_cache=FrameCacheRef(str(data_dir), R, version),
                           base=Weights("pix2pix_base", str(tiny.pix2pix), weights_sha256(tiny.pix2pix)))


def pix2pix_job(data, out_dir: Path, batch: int = 2, **options) -> Pix2PixJob:
    from pecn_ml.training.pix2pix import Pix2PixTrainConfig

    config = Pix2PixTrainConfig(resolution=R, train_batch_size=batch, gradient_accumulation_steps=1, max_train_steps=2,
                                learning_rate=1e-4, mixed_precision="no", seed=0, checkpointing_steps=1,
                                checkpoints_total_limit=1, validation_epochs=1, num_validation_samples=1,
                                validation_inference_steps=2, torch_threads=1, log_every_s=0.0)
    return Pix2PixJob(annotations=data.annotations, frame_cache=data.frame_cache, base=data.base, variant="next1",
                      seed=0, train_config=config, options=LaunchOptions(str(out_dir), **options))


def materialize(trainer: str, job, tmp_path: Path, num_processes: int = 1, devices=("0", "1"), **launch):
    """A throw-away asset: claim a (simulated) device, train in a Pipes child, return its result."""

    @dg.asset(name=f"{trainer}_probe")
    def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with claim_devices(num_processes, tmp_path / "locks", devices=list(devices),
                           log=context.log.info) as claim:
            return run_training(context, trainer, job, num_processes=num_processes, claim=claim,
                                cpu=True, threads_per_process=1, **launch)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([probe], instance=instance, raise_on_error=False)
    result.log_lines = [e.user_message for e in instance.all_logs(result.run_id)]
    return result


def _materialization(result: dg.ExecuteInProcessResult):
    assert result.success, _failure(result)
    (event,) = result.get_asset_materialization_events()
    return event.materialization


def _failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return failures[0].event_specific_data.error.message if failures else ""


def _sample(model_dir: Path):
    import numpy as np
    import torch
    from PIL import Image

    from pecn_ml.sampling import load_pipeline

    pipe = load_pipeline(model_dir, torch.device("cpu"), torch.float32)
    image = Image.fromarray(np.zeros((R, R, 3), np.uint8))
    return pipe("pushing something", image=image, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="np").images[0]


def test_pix2pix_in_a_pipes_child_reports_its_checkpoint(data, tmp_path):
    from pecn_ml.artifacts import Pix2PixCheckpoint, artifact_from_json
    from pecn_ml.sampling import checkpoint_sha256

    out = tmp_path / "instruct_pix2pix"
    result = materialize("pix2pix", pix2pix_job(data, out, prune_training_state=True), tmp_path)
    mat = _materialization(result)
    meta = {k: v.value for k, v in mat.metadata.items()}
    checkpoint = artifact_from_json(meta["artifact"]).verify()
    assert isinstance(checkpoint, Pix2PixCheckpoint) and checkpoint.steps == 2
    # its sha covers the whole pipeline folder, and is the data version
    assert checkpoint.sha256_scheme == "manifest" and "base.json" in checkpoint.files
    assert checkpoint.sha256 == checkpoint_sha256(checkpoint.path) == mat.tags["dagster/data_version"]
    assert meta["num_processes"] == 1 and meta["gpu_devices"] == ["0"]
    assert any(line.startswith("pix2pix done: 2 steps") for line in result.log_lines)  # via Pipes
    assert any(line.startswith("claimed GPU device(s) 0") for line in result.log_lines)
    assert [r["rank"] for r in meta["ranks"]] == [0]
    assert meta["ranks"][0]["cuda_visible_devices"] == "0"  # the claim reached the child
    assert meta["global_batch_size"] == 2 and meta["peak_rss_bytes"] > 0
    assert meta["bytes_on_disk"] > meta["model_bytes_on_disk"] > 0
    assert meta["parameters"] > 0 and meta["seconds_per_step"] > 0
    assert any(p.endswith("checkpoint-1") for p in meta["pruned_paths"])
    assert not list((out / "checkpoints").glob("checkpoint-*"))
    assert mat.tags["dagster/data_version"] == checkpoint.sha256
    assert not list(out.glob(".pipes_job-*.json"))  # the job file is removed after the launch
    assert _sample(Path(checkpoint.path)).shape == (R, R, 3)


def test_a_failing_child_fails_the_step_with_its_stderr_tail(data, tmp_path):
    frame_cache = replace(data.frame_cache, data_dir=str(tmp_path / "no-data"))
    job = replace(pix2pix_job(data, tmp_path / "out"), frame_cache=frame_cache)
    result = materialize("pix2pix", job, tmp_path)
    message = _failure(result)
    assert not result.success
    assert "exit code 1" in message and "no frame cache" in message


def test_two_processes_on_the_cpu_over_gloo(tmp_path, monkeypatch):
    """The K = 2 launch itself: torchrun, gloo, rank 0 alone reports, every rank leaves evidence."""
    tests = str(Path(__file__).resolve().parents[1])  # the child imports pecn_test_support
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (tests, os.environ.get("PYTHONPATH")))))
    job = CheckJob(LaunchOptions(str(tmp_path / "check")))
    mat = _materialization(materialize("check", job, tmp_path, num_processes=2, module=CHECK_MODULE))
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["num_processes"] == 2 and meta["reduce_sum"] == meta["expected_sum"] == 3.0
    assert meta["weights_agree"] is True and meta["backend"] == "gloo"
    assert sorted(r["rank"] for r in meta["ranks"]) == [0, 1]
    assert len({r["pid"] for r in meta["ranks"]}) == 2
    assert meta["gpu_devices"] == ["0", "1"]


def test_pix2pix_with_two_processes_trains_on_both_and_samples(data, tmp_path):
    """K = 2 ranks at batch 1 = one global batch of 2: both ranks ran, rank 0 alone wrote the
    pipeline, which loads and samples."""
    from pecn_ml.artifacts import artifact_from_json

    out = tmp_path / "k2"
    mat = _materialization(materialize("pix2pix", pix2pix_job(data, out, batch=1), tmp_path, num_processes=2))
    meta = {k: v.value for k, v in mat.metadata.items()}
    checkpoint = artifact_from_json(meta["artifact"]).verify()
    assert meta["num_processes"] == 2 and meta["global_batch_size"] == 2 and checkpoint.steps == 2
    assert sorted(r["rank"] for r in meta["ranks"]) == [0, 1] and len({r["pid"] for r in meta["ranks"]}) == 2
    assert [r["cuda_visible_devices"] for r in meta["ranks"]] == ["0,1", "0,1"]
    assert len(list(out.glob("model"))) == 1 and not list(out.glob("model.*"))
    assert _sample(Path(checkpoint.path)).shape == (R, R, 3)


def test_the_message_reader_waits_for_complete_lines(tmp_path):
    """A message caught half-written is parsed once its newline arrives (Dagster's file reader
    would hand the half line to json.loads and lose every later message)."""
    import threading
    import time

    from dagster_pipes import PipesDefaultMessageWriter

    from pecn_assets.pipes_launch import CompleteLineMessageReader

    class Handler:
        def __init__(self):
            self.messages, self.errors = [], []

        def handle_message(self, message):
            self.messages.append(message)

        def report_pipes_framework_exception(self, origin, exc_info):
            self.errors.append((origin, exc_info[1]))

    handler = Handler()
    big = {"method": "report_asset_materialization", "params": {"loss_values": list(range(3000))}}
    line = json.dumps(big) + "\n"
    with CompleteLineMessageReader(str(tmp_path / "messages.jsonl")).read_messages(handler) as params:
        path = params[PipesDefaultMessageWriter.FILE_PATH_KEY]
        with open(path, "a", encoding="utf-8") as f:
            f.write(line[: len(line) // 2])
            f.flush()
            time.sleep(0.2)  # the reader sees the half line now
            assert handler.messages == [] and not handler.errors
            f.write(line[len(line) // 2:])
            f.write(json.dumps({"method": "closed", "params": {}}) + "\n")
    assert handler.messages == [big, {"method": "closed", "params": {}}] and not handler.errors
    assert not [t for t in threading.enumerate() if "_read" in t.name]
