"""The artifact I/O manager and the blocking checks, with stand-in assets that carry the real keys:
a checkpoint changed on disk is refused (the checkpoint-changed guard; the file named for a
handle by manifest, a handle from before manifests loads with a warning), a failed blocking check
stops what depends on it in the same run and is refused again in a later run, a WARN does not."""

import logging
from pathlib import Path
from typing import Optional

import dagster as dg
import numpy as np
import pytest
from scipy import stats

from pecn_assets.checks import build_checks, predicts_motion
from pecn_assets.io_manager import ArtifactIOManager
from pecn_assets.partitions import Partitions, add_seeds
from pecn_ml.artifacts import (MANIFEST, UNET_WEIGHTS, EvalSetResult, Evaluation, PacNetCheckpoint, Pix2PixCheckpoint,
                               ProgressEstimates)
from pecn_ml.profiles import get_profile
from pecn_ml.utils.files import folder_manifest, manifest_sha256, sha256_file, write_json_atomic

PARTS = Partitions.build(get_profile("smoke"), (0, 1))
CHECKS = {next(iter(c.check_keys)).name: c for c in build_checks(PARTS)}
KEY = "0|next1"


class Loss(dg.Config):
    final_loss: float
    steps: int = 100
    manifest: bool = False   # a handle by the folder's manifest; False: by the UNet's sha (older handles)


def model_dir(root: Path, key: str) -> Path:
    return root / "ckpt" / key.replace("|", "_")


def ip2p_standin(root: Path) -> dg.AssetsDefinition:
    @dg.asset(name="ip2p_model", partitions_def=PARTS.model)
    def _ip2p(context: dg.AssetExecutionContext, config: Loss) -> Pix2PixCheckpoint:
        weights = model_dir(root, context.partition_key) / UNET_WEIGHTS
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(f"weights {context.run.run_id}".encode())
        (weights.parents[1] / "model_index.json").write_text("{}")
        files = folder_manifest(weights.parents[1])
        shas = (dict(sha256=manifest_sha256(files), sha256_scheme=MANIFEST, files=files) if config.manifest
                else dict(sha256=sha256_file(weights)))
        return Pix2PixCheckpoint(path=str(weights.parents[1]), **shas, variant="next1",
                                 seed=0, steps=config.steps, final_loss=config.final_loss, first_loss=0.09,
                                 loss_window=10, run_dir=str(root), run_id=context.run.run_id)

    return _ip2p


@dg.asset(name="evaluation", partitions_def=PARTS.model)
def evaluation_standin(ip2p_model: Pix2PixCheckpoint,
                       progress_estimates: Optional[ProgressEstimates]) -> Evaluation:
    assert progress_estimates is None  # never materialised: an Optional input gets None
    return Evaluation(ip2p_model.variant, ip2p_model.seed, ip2p_model.path, ip2p_model.sha256, {})


@dg.asset(name="t_tests")
def t_tests_standin(evaluation: dict[str, Evaluation]) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"read": sorted(evaluation)})


@pytest.fixture
def setup(tmp_path):
    assets = [ip2p_standin(tmp_path), evaluation_standin, t_tests_standin, dg.AssetSpec("progress_estimates")]
    resources = {"io_manager": ArtifactIOManager(root=str(tmp_path / "artifacts"))}
    defs = dg.Definitions(assets=assets, asset_checks=[CHECKS["loss_decreased"]], resources=resources)
    instance = dg.DagsterInstance.ephemeral()
    add_seeds(instance, PARTS.seeds)  # the seed dimension's keys live in the instance
    return defs, instance, tmp_path


def _run(defs, instance, assets, key=KEY, loss=None, manifest=False):
    config = ({"ops": {"ip2p_model": {"config": {"final_loss": loss[0], "steps": loss[1], "manifest": manifest}}}}
              if loss else None)
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(a) for a in assets], partition_key=key,
        run_config=config, raise_on_error=False)


def _failure(result) -> str:
    return " ".join(e.step_failure_data.error.message for e in result.all_events
                    if e.event_type == dg.DagsterEventType.STEP_FAILURE and e.step_failure_data.error)


def _materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_a_checkpoint_changed_on_disk_is_refused(setup):
    defs, instance, root = setup
    assert _run(defs, instance, ["ip2p_model"], loss=(0.05, 100)).success
    assert _run(defs, instance, ["evaluation"]).success
    (model_dir(root, KEY) / UNET_WEIGHTS).write_bytes(b"overwritten by another training run")
    result = _run(defs, instance, ["evaluation"])
    assert not result.success
    assert "changed since it was recorded" in _failure(result) and "re-materialise ip2p_model" in _failure(result)


def test_a_changed_file_of_a_checkpoint_is_refused_by_name(setup):
    defs, instance, root = setup
    assert _run(defs, instance, ["ip2p_model"], loss=(0.05, 100), manifest=True).success
    result = _run(defs, instance, ["evaluation"])
    assert result.success
    assert not [r for r in instance.all_logs(result.run_id) if r.level == logging.WARNING and "sha256" in r.user_message]
    (model_dir(root, KEY) / "model_index.json").write_text('{"_class_name": "another pipeline"}')
    result = _run(defs, instance, ["evaluation"])
    assert not result.success
    assert "model_index.json changed" in _failure(result) and "re-materialise ip2p_model" in _failure(result)


def test_an_old_handle_loads_with_a_warning_in_the_step_log(setup):
    defs, instance, root = setup
    assert _run(defs, instance, ["ip2p_model"], loss=(0.05, 100)).success
    (model_dir(root, KEY) / "model_index.json").write_text('{"_class_name": "not covered by the old sha"}')
    result = _run(defs, instance, ["evaluation"])
    assert result.success
    logged = [r.user_message for r in instance.all_logs(result.run_id) if r.level == logging.WARNING]
    assert any("covers only unet/diffusion_pytorch_model.safetensors" in m for m in logged), logged


def test_a_failed_blocking_check_stops_downstream_now_and_later(setup):
    defs, instance, _ = setup
    result = _run(defs, instance, ["ip2p_model", "evaluation"], loss=(0.5, 100))  # worse than first: 0.09
    assert not result.success and _materialized(result) == {"ip2p_model"}  # evaluation never ran
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("ip2p_model"), "loss_decreased")])
    assert next(iter(check.values())).status.value == "FAILED"
    later = _run(defs, instance, ["evaluation"])  # another run: the I/O manager refuses it too
    assert not later.success and "failed its blocking check" in _failure(later)


def test_a_warning_does_not_block(setup):
    defs, instance, _ = setup
    result = _run(defs, instance, ["ip2p_model", "evaluation"], loss=(0.5, 2))  # too few steps to judge
    assert result.success and _materialized(result) == {"ip2p_model", "evaluation"}
    (evaluation,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    data = evaluation.event_specific_data
    assert not data.passed and data.severity == dg.AssetCheckSeverity.WARN


def test_t_tests_read_every_partition_and_refuse_a_failed_one(setup):
    defs, instance, _ = setup
    keys = PARTS.model.get_partition_keys(dynamic_partitions_store=instance)
    assert len(keys) == 2 * 6
    for key in keys:
        assert _run(defs, instance, ["ip2p_model", "evaluation"], key=key, loss=(0.05, 100)).success
    read = _run(defs, instance, ["t_tests"], key=None)
    assert read.success
    assert read.get_asset_materialization_events()[0].materialization.metadata["read"].value == sorted(keys)
    assert not _run(defs, instance, ["ip2p_model"], key=keys[-1], loss=(0.5, 100)).success
    assert _run(defs, instance, ["evaluation"], key=keys[0]).success  # other partitions are fine
    blocked = _run(defs, instance, ["evaluation"], key=keys[-1])
    assert not blocked.success and f"ip2p_model partition {keys[-1]} failed its blocking check" in _failure(blocked)


def test_pacnet_and_evaluation_checks():
    pacnet = CHECKS["beats_mean_predictor"]
    assert pacnet.check_specs and all(s.blocking for s in pacnet.check_specs)
    assert all(s.blocking for s in CHECKS["samples_and_ranges"].check_specs)
    assert not any(s.blocking for s in CHECKS["beats_copy_frame"].check_specs)
    worse = PacNetCheckpoint("p", "s", "regression", 21.0, 20.0, 1, 1, "d", num_val=100)
    assert worse.problems() and not PacNetCheckpoint("p", "s", "regression", 19.0, 20.0, 1, 1, "d",
                                                     num_val=100).problems()
    short = EvalSetResult("basic", "r.json", "s", n=1, n_expected=2, mean={"ssim": 0.5, "psnr": 20.0},
                          std={}, baseline_mean={"ssim": 0.9, "psnr": 30.0},
                          autoencoder_mean={"ssim": 0.6, "psnr": 22.0})
    evaluation = Evaluation("next1", 0, "c", "s", {"basic": short})
    assert evaluation.problems() == ["basic: n = 1 samples, expected 2"]
    assert len(evaluation.warnings()) == 2  # below the copy-frame baseline in SSIM and PSNR: WARN only


def _motion_evaluation(root: Path, diffs: dict[str, list[float]]) -> Evaluation:
    """An Evaluation whose results.json per eval set has the model's motion-region PSNR = the latent
    copy's + the given per-video differences (dB)."""
    sets = {}
    for eval_set, ds in diffs.items():
        samples = [{"video_id": str(i), "motion_psnr": 20.0 + d, "latent_copy_motion_psnr": 20.0 + 0.1 * i}
                   for i, d in enumerate(ds)]
        for i, x in enumerate(samples):
            x["motion_psnr"] += 0.1 * i
        path = write_json_atomic(root / f"{eval_set}.json", {"n": len(samples), "samples": samples})
        sets[eval_set] = EvalSetResult(eval_set, str(path), sha256_file(path), n=len(ds), n_expected=len(ds),
                                       mean={"ssim": 0.5, "psnr": 20.0}, std={},
                                       baseline_mean={"ssim": 0.9, "psnr": 30.0},
                                       autoencoder_mean={"ssim": 0.6, "psnr": 22.0})
    return Evaluation("next5", 0, "c", "s", sets)


def test_predicts_motion_passes_when_the_model_beats_the_latent_copy_on_every_set(tmp_path):
    assert not any(s.blocking for s in CHECKS["predicts_motion"].check_specs)
    ahead = [0.8, 1.1, 0.9, 1.3, 0.7, 1.0]
    result = predicts_motion(_motion_evaluation(tmp_path, {"basic": ahead, "backforth": ahead[:4]}))
    assert result.passed, result.description
    meta = {k: v.value for k, v in result.metadata.items()}
    assert meta["basic_motion_psnr_diff_db"] == pytest.approx(np.mean(ahead))
    assert meta["basic_n"] == 6 and meta["backforth_n"] == 4
    expected = stats.ttest_rel(np.array(ahead) + 20, np.zeros(6) + 20, alternative="greater").pvalue
    assert meta["basic_p"] == pytest.approx(expected) and meta["basic_p"] < 0.01


def test_predicts_motion_warns_on_a_copier_and_on_a_noisy_set(tmp_path):
    behind = [-0.8, -1.1, -0.9, -1.3, -0.7, -1.0]   # the latent copy is better: a copier, blurred
    noisy = [2.0, -1.9, 0.1, 1.5, -1.4, 0.0]        # above on average, p far from 0.05
    result = predicts_motion(_motion_evaluation(tmp_path, {"basic": behind, "backforth": noisy}))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert "basic: motion-region PSNR -0.967 dB vs the latent copy" in result.description
    assert "backforth: motion-region PSNR +0.050 dB" in result.description
    meta = {k: v.value for k, v in result.metadata.items()}
    assert meta["basic_p"] > 0.99 and 0.05 < meta["backforth_p"] < 0.95


def test_predicts_motion_warns_when_it_cannot_test(tmp_path):
    one = predicts_motion(_motion_evaluation(tmp_path, {"basic": [1.0]}))
    assert not one.passed and "n = 1 paired samples; at least 2 needed" in one.description
    constant = predicts_motion(_motion_evaluation(tmp_path, {"basic": [0.5] * 4}))  # equal differences > 0
    assert constant.passed and constant.metadata["basic_p"].value == 0.0
    path = write_json_atomic(tmp_path / "old.json", {"n": 1, "samples": [{"video_id": "1", "ssim": 0.5}]})
    old = Evaluation("next1", 0, "c", "s", {"basic": EvalSetResult(
        "basic", str(path), sha256_file(path), n=1, n_expected=1, mean={"ssim": 0.5, "psnr": 20.0}, std={},
        baseline_mean={"ssim": 0.9, "psnr": 30.0}, autoencoder_mean={"ssim": 0.6, "psnr": 22.0})})
    assert "no motion-region scores" in predicts_motion(old).description
