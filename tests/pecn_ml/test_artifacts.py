"""The artifact handles: JSON round trip, self-verification (a changed file of a checkpoint is
refused, named; handles from before manifests still verify what they covered, with a warning),
the checks' logic, metadata kinds."""

import json
import math
import shutil
import struct
import warnings
from pathlib import Path

import pytest

from pecn_ml.artifacts import (ARTIFACT_TYPES, LEGACY_PACNET, LEGACY_UNET, LEGACY_WEIGHTS, MANIFEST,
                               MIN_STEPS_TO_JUDGE, MIN_VAL_VIDEOS_TO_JUDGE, UNET_WEIGHTS, ArtifactChanged,
                               CopyFrameBaseline, EvalSetResult, Evaluation, FilteredAnnotations,
                               PacNetCheckpoint, PartialShaWarning, Pix2PixCheckpoint, ProgressEstimates,
                               Table, TTests, Url, Weights, artifact_from_json, tracking_metadata)
from pecn_ml.models.weights import weights_sha256
from pecn_ml.sampling import checkpoint_sha256
from pecn_ml.training.tracking import TrackingInfo
from pecn_ml.utils.files import folder_manifest, manifest_sha256, sha256_file


def checkpoint(tmp_path: Path, legacy: bool = False, **overrides) -> Pix2PixCheckpoint:
    """A checkpoint handle of a small folder: by its manifest, or (`legacy`) by the UNet file's sha
    alone, as handles were recorded before manifests."""
    folder = tmp_path / "run" / "model"
    weights = folder / UNET_WEIGHTS
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"unet weights")
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionInstructPix2PixPipeline"}')
    files = folder_manifest(folder)
    shas = (dict(sha256=sha256_file(weights)) if legacy else
            dict(sha256=manifest_sha256(files), sha256_scheme=MANIFEST, files=files))
    values = dict(path=str(folder), **shas, variant="next1", seed=0,
                  steps=100, final_loss=0.07, first_loss=0.09, loss_window=30, run_dir=str(tmp_path / "run"),
                  run_id="r1", tracking=TrackingInfo(backend="tensorboard", log_dir=str(tmp_path / "tb"),
                                                     tags={"dagster_run_id": "r1"}))
    return Pix2PixCheckpoint(**{**values, **overrides})


def eval_set(tmp_path: Path, name: str = "basic", **overrides) -> EvalSetResult:
    path = tmp_path / f"{name}.json"
    results = {"n": 3, "mean": {"ssim": 0.7, "psnr": 20.0}, "std": {"ssim": 0.1, "psnr": 1.0},
               "baseline_mean": {"ssim": 0.9, "psnr": 30.0}, "autoencoder_mean": {"ssim": 0.8, "psnr": 25.0},
               "samples": []}
    path.write_text(json.dumps({**results, **overrides}))
    return EvalSetResult.from_results(name, path, n_expected=3)


def test_every_artifact_type_round_trips_through_json(tmp_path):
    ckpt = checkpoint(tmp_path)
    evaluation = Evaluation("next1", 0, ckpt.path, ckpt.sha256, {"basic": eval_set(tmp_path)})
    examples = [
        ckpt, evaluation,
        FilteredAnnotations(str(tmp_path), {"train_filtered.json": "a" * 64}, "v", {"train_filtered.json": 3}),
        PacNetCheckpoint("p", "s", "regression", 10.0, 20.0, 3, 5, "d", "r", 72, None),
        ProgressEstimates("p", "s", "pacnet-sha", 4, 12.5, "r"),
        CopyFrameBaseline("p", "s", eval_set="basic", by_target={"21": {"ssim": 0.9, "psnr": 30.0, "n": 3}}),
        TTests("p", "s", 8, (0, 1), {"0|next1": "sha"}),
        Weights("pix2pix_base", "p", "s", "stand-in"),
    ]
    for artifact in examples:
        data = json.loads(json.dumps(artifact.to_json()))  # plain JSON
        assert artifact_from_json(data) == artifact, type(artifact).__name__
        assert artifact_from_json({**data, "a_dropped_field": 1}) == artifact   # older handles still load
    assert {type(a).__name__ for a in examples} | {"FrameCacheRef", "Workbook"} == set(ARTIFACT_TYPES)
    with pytest.raises(ValueError, match="not a known artifact type"):
        artifact_from_json({"type": "Pickle"})


def test_a_checkpoint_verifies_every_file_naming_the_one_that_changed(tmp_path):
    ckpt = checkpoint(tmp_path)
    folder = Path(ckpt.path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # a manifest handle verifies without a warning
        assert ckpt.verify() is ckpt
    (folder / "README.md").write_text("a model card added later: no loader reads it")
    assert ckpt.verify() is ckpt
    (folder / UNET_WEIGHTS).write_bytes(b"retrained in place")
    with pytest.raises(ArtifactChanged, match="unet/diffusion_pytorch_model.safetensors changed .*changed since "
                                              "it was recorded"):
        ckpt.verify()
    (folder / UNET_WEIGHTS).write_bytes(b"unet weights")
    (folder / "model_index.json").unlink()
    with pytest.raises(ArtifactChanged, match="model_index.json is missing"):
        ckpt.verify()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionInstructPix2PixPipeline"}')
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"a second weights file a loader may prefer")
    with pytest.raises(ArtifactChanged, match="unet/diffusion_pytorch_model.bin was added"):
        ckpt.verify()
    shutil.rmtree(folder)
    with pytest.raises(ArtifactChanged, match="is gone"):
        ckpt.verify()


def test_an_evaluation_verifies_its_results_and_its_checkpoint(tmp_path):
    ckpt = checkpoint(tmp_path)
    evaluation = Evaluation("next1", 0, ckpt.path, ckpt.sha256, {"basic": eval_set(tmp_path)},
                            checkpoint_sha256_scheme=ckpt.sha256_scheme, checkpoint_files=ckpt.files)
    assert evaluation.verify().verify_checkpoint().results("basic")["n"] == 3
    Path(evaluation.sets["basic"].results_json).write_text("{}")
    with pytest.raises(ArtifactChanged):
        evaluation.results("basic")
    (Path(ckpt.path) / "model_index.json").write_text("{}")
    with pytest.raises(ArtifactChanged, match="checkpoint of evaluation .*model_index.json changed"):
        evaluation.verify_checkpoint()


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _tensor_offset(path: Path, name: str) -> int:
    """Byte offset of the first byte of tensor `name` in a safetensors file."""
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8:8 + header_len])
    return 8 + header_len + header[name]["data_offsets"][0]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A saved tiny InstructPix2Pix pipeline (every component a real one has), with a model card."""
    from pecn_ml.models.tiny import build_tiny_pix2pix

    folder = build_tiny_pix2pix(tmp_path_factory.mktemp("tiny") / "pipeline")
    (folder / "README.md").write_text("---\nlicense: other\n---\n# a model card\n")
    return folder


def _tamper(folder: Path, rel: str) -> None:
    path = folder / rel
    if rel.endswith(".safetensors"):
        name = "decoder.conv_out.weight" if rel.startswith("vae/") else None
        header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
        name = name or next(k for k in sorted(header) if k != "__metadata__")
        _flip_bit(path, _tensor_offset(path, name) + 1)
    else:   # a config, tokenizer or index file: one bit of its last byte before the end
        _flip_bit(path, path.stat().st_size - 2)


@pytest.mark.parametrize("rel", ["vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                 "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                                 "scheduler/scheduler_config.json", "model_index.json", "unet/config.json"])
def test_a_flipped_bit_in_any_file_of_a_saved_pipeline_is_refused_naming_it(tiny_pipeline, tmp_path, rel):
    folder = Path(shutil.copytree(tiny_pipeline, tmp_path / "model"))
    files = folder_manifest(folder)
    assert rel in files and "README.md" not in files
    assert checkpoint_sha256(folder) == manifest_sha256(files)   # what the evaluation records
    ckpt = checkpoint(tmp_path, path=str(folder), sha256=manifest_sha256(files), files=files)
    assert ckpt.verify() is ckpt
    _tamper(folder, rel)
    with pytest.raises(ArtifactChanged, match=f"ip2p checkpoint: {folder}: {rel} changed"):
        ckpt.verify()
    assert checkpoint_sha256(folder) != ckpt.sha256


def test_an_old_handle_with_the_unet_sha_still_verifies_the_unet_with_a_warning(tiny_pipeline, tmp_path):
    folder = Path(shutil.copytree(tiny_pipeline, tmp_path / "model"))
    old = checkpoint(tmp_path, legacy=True, path=str(folder), sha256=sha256_file(folder / UNET_WEIGHTS)).to_json()
    del old["sha256_scheme"], old["files"]                 # JSON written before the fields existed
    ckpt = artifact_from_json(json.loads(json.dumps(old)))
    assert ckpt.sha256_scheme == LEGACY_UNET and ckpt.files == {}
    with pytest.warns(PartialShaWarning, match="covers only unet/diffusion_pytorch_model.safetensors"):
        assert ckpt.verify() is ckpt
    _tamper(folder, "vae/diffusion_pytorch_model.safetensors")   # not covered by the old sha: only warned
    with pytest.warns(PartialShaWarning):
        ckpt.verify()
    _tamper(folder, str(UNET_WEIGHTS))
    with pytest.warns(PartialShaWarning), pytest.raises(ArtifactChanged, match="changed since it was recorded"):
        ckpt.verify()


def test_pacnet_and_base_weights_cover_their_folders_and_old_handles_their_weights(tmp_path):
    folder = tmp_path / "best"
    (folder / "tokenizer").mkdir(parents=True)
    for rel, text in (("model.safetensors", "weights"), ("config.json", "{}"), ("tokenizer/vocab.json", "{}")):
        (folder / rel).write_text(text)
    files = folder_manifest(folder)
    pacnet = PacNetCheckpoint(str(folder), manifest_sha256(files), "regression", 10.0, 20.0, 1, 1, "d",
                              sha256_scheme=MANIFEST, files=files)
    weights = Weights("resnet_base", str(folder), manifest_sha256(files), "stand-in", sha256_scheme=MANIFEST,
                      files=files)
    old_pacnet = PacNetCheckpoint(str(folder), sha256_file(folder / "model.safetensors"), "regression", 10.0, 20.0,
                                  1, 1, "d")
    old_weights = Weights("resnet_base", str(folder), weights_sha256(folder), "stand-in")
    assert (old_pacnet.sha256_scheme, old_weights.sha256_scheme) == (LEGACY_PACNET, LEGACY_WEIGHTS)
    assert pacnet.verify() is pacnet and weights.verify() is weights
    (folder / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(ArtifactChanged, match="pacnet checkpoint: .*tokenizer/vocab.json changed"):
        pacnet.verify()
    with pytest.raises(ArtifactChanged, match="resnet_base: .*tokenizer/vocab.json changed"):
        weights.verify()
    for old in (old_pacnet, old_weights):
        with pytest.warns(PartialShaWarning):
            assert old.verify() is old
    (folder / "model.safetensors").write_text("other weights")
    for old in (old_pacnet, old_weights):
        with pytest.warns(PartialShaWarning), pytest.raises(ArtifactChanged, match="changed since it was recorded"):
            old.verify()


def test_loss_check_blocks_long_runs_and_only_warns_for_short_ones(tmp_path):
    assert checkpoint(tmp_path).problems() == [] and checkpoint(tmp_path).warnings() == []
    worse = checkpoint(tmp_path, final_loss=0.1, first_loss=0.09)
    assert "not below the first" in worse.problems()[0]
    short = checkpoint(tmp_path, final_loss=0.1, first_loss=0.09, steps=MIN_STEPS_TO_JUDGE - 1)
    assert short.problems() == [] and "too few steps" in short.warnings()[0]
    for bad in (float("nan"), float("inf")):
        assert "not finite" in checkpoint(tmp_path, final_loss=bad, steps=2).problems()[0]


def test_pacnet_check_compares_with_the_mean_predictor():
    def net(val_mae, num_val=MIN_VAL_VIDEOS_TO_JUDGE):
        return PacNetCheckpoint("p", "s", "regression", val_mae, 20.0, 1, 1, "d", num_val=num_val)

    assert net(10.0).problems() == [] and net(10.0).warnings() == []
    assert "not below the mean predictor" in net(20.0).problems()[0]
    small = net(21.0, num_val=MIN_VAL_VIDEOS_TO_JUDGE - 1)
    assert small.problems() == [] and "too few to judge" in small.warnings()[0]
    assert "not finite" in net(math.nan).problems()[0]


def test_pacnet_check_judges_the_test_score_where_there_is_one(tmp_path):
    """The selection split picked the epoch (val_mae, biased low); the evaluation videos score it."""
    split = tmp_path / "selection_split.json"
    split.write_text(json.dumps({"ids": ["3", "5"]}))

    def net(test_mae, num_test=MIN_VAL_VIDEOS_TO_JUDGE, val_mae=5.0):
        return PacNetCheckpoint("p", "s", "regression", val_mae, 20.0, 1, 1, "d", num_val=24, test_mae=test_mae,
                                test_baseline_mae=19.0, num_test=num_test, selection_split=str(split),
                                selection_split_sha256=sha256_file(split))

    assert net(10.0).problems() == [] and "test_mae 19.50 pp is not below" in net(19.5).problems()[0]
    assert net(19.5, num_test=10).problems() == [] and "10 evaluation videos" in net(19.5, num_test=10).warnings()[0]
    assert net(10.0, val_mae=25.0).problems() == []          # a poor selection score alone does not block
    meta = net(10.0).metadata()
    assert meta["selection_split"] == split and meta["num_selection"] == 24 and meta["num_test"] == 50
    assert {"val_mae", "baseline_mae", "test_mae", "test_baseline_mae", "num_val"} <= set(meta)
    recorded = net(10.0)
    assert recorded.selection_ids() == ["3", "5"] and artifact_from_json(recorded.to_json()) == recorded
    split.write_text(json.dumps({"ids": ["3"]}))
    with pytest.raises(ArtifactChanged):
        recorded.selection_ids()
    old = PacNetCheckpoint("p", "s", "regression", 10.0, 20.0, 1, 1, "d", num_val=60)   # before the split
    assert old.selection_ids() == [] and "test_mae" not in old.metadata() and "selection_split" not in old.metadata()


def test_weights_name_their_base_for_a_model_card(tmp_path):
    hub = Weights("pix2pix_base", str(tmp_path), "a" * 64, "hub", name="timbrooks/instruct-pix2pix", revision="c" * 40)
    assert hub.card_base().license == "mit" and hub.card_base().revision == "c" * 40
    assert Weights("resnet_base", str(tmp_path), "b" * 64).card_base().name == str(tmp_path)   # older handle


def test_evaluation_checks_samples_ranges_and_the_copy_frame_baseline(tmp_path):
    ok = eval_set(tmp_path)
    assert ok.problems() == []
    assert [w.split(":")[1].split()[0] for w in ok.warnings()] == ["ssim", "psnr"]  # below copy-frame: warn
    assert "n = 2 samples, expected 3" in eval_set(tmp_path, n=2).problems()[0]
    assert "ssim 1.5" in eval_set(tmp_path, mean={"ssim": 1.5, "psnr": 20.0}).problems()[0]
    assert "psnr nan" in eval_set(tmp_path, mean={"ssim": 0.5, "psnr": float("nan")}).problems()[0]
    better = eval_set(tmp_path, mean={"ssim": 0.95, "psnr": 31.0})
    assert better.warnings() == []


def test_progress_estimates_are_read_only_while_unchanged(tmp_path):
    path = tmp_path / "estimates.json"
    path.write_text(json.dumps({"rows": [{"video_id": "7", "estimate_percent": 41.9}]}))
    estimates = ProgressEstimates(str(path), sha256_file(path), "pacnet-sha", 1, 10.0)
    assert estimates.percent_by_video() == {"7": 41}
    assert estimates.lineage()["pacnet_checkpoint_sha256"] == "pacnet-sha"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(ArtifactChanged):
        estimates.percent_by_video()


def test_metadata_names_paths_and_tracking_links(tmp_path):
    meta = checkpoint(tmp_path).metadata()
    assert isinstance(meta["checkpoint"], Path) and meta["checkpoint_sha256"]
    assert meta["tracking"] == "tensorboard" and isinstance(meta["tensorboard_dir"], Path)
    mlflow = tracking_metadata(TrackingInfo(backend="mlflow", tracking_uri="http://mlflow:5000",
                                            experiment="pecn", run_id="abc"))
    assert isinstance(mlflow["mlflow_tracking_uri"], Url) and mlflow["mlflow_run"].endswith("/runs/abc")
    local = tracking_metadata(TrackingInfo(backend="mlflow", tracking_uri="sqlite:////x/mlflow.db", run_id="abc"))
    assert "mlflow_run" not in local and local["mlflow_run_id"] == "abc"


def _scored(tmp_path: Path, name: str, n: int, shift: float) -> EvalSetResult:
    """An eval set with every method's means, the motion-region ones included."""
    def means(ssim, psnr, mpsnr, mmae):
        return {"ssim": ssim + shift, "psnr": psnr + shift, "motion_psnr": mpsnr + shift, "motion_mae": mmae + shift}

    return eval_set(tmp_path, name, n=n, mean=means(0.7, 20.0, 15.0, 0.10),
                    latent_copy_mean=means(0.72, 21.0, 14.0, 0.12), baseline_mean=means(0.9, 30.0, 18.0, 0.08),
                    autoencoder_mean=means(0.8, 25.0, 22.0, 0.05), n_static=1)


def test_evaluation_metadata_leads_with_the_scores_table_then_every_key(tmp_path):
    sets = {"basic": _scored(tmp_path, "basic", 3, 0.0), "backforth": _scored(tmp_path, "backforth", 1, 0.01)}
    meta = Evaluation("next5", 0, "c", "s", sets).metadata()
    assert next(iter(meta)) == "scores" and isinstance(meta["scores"], Table)
    table = meta["scores"]
    assert [c[0] for c in table.columns] == ["eval_set", "method", "ssim", "psnr", "motion_psnr", "n"]
    assert [(r["eval_set"], r["method"]) for r in table] == [
        (s, m) for s in ("basic", "backforth") for m in ("model", "latent copy", "copy-frame", "ceiling")]
    assert table[5] == {"eval_set": "backforth", "method": "latent copy", "ssim": 0.73, "psnr": 21.01,
                        "motion_psnr": 14.01, "n": 1}  # 4 significant digits
    # per set, with its prefix
    assert meta["basic_latent_copy_ssim_mean"] == 0.72 and meta["basic_latent_copy_psnr_mean"] == 21.0
    assert meta["basic_motion_psnr_mean"] == 15.0 and meta["basic_latent_copy_motion_psnr_mean"] == 14.0
    assert meta["basic_baseline_motion_psnr_mean"] == 18.0 and meta["basic_autoencoder_motion_psnr_mean"] == 22.0
    assert meta["backforth_motion_mae_mean"] == pytest.approx(0.11) and meta["basic_n_static"] == 1
    # the partition: n-weighted over both sets (3 + 1 samples), the old keys kept
    for key, value in (("latent_copy_ssim_mean", 0.72), ("latent_copy_psnr_mean", 21.0), ("motion_psnr_mean", 15.0),
                       ("latent_copy_motion_psnr_mean", 14.0), ("baseline_motion_psnr_mean", 18.0),
                       ("autoencoder_motion_psnr_mean", 22.0), ("motion_mae_mean", 0.10),
                       ("latent_copy_motion_mae_mean", 0.12), ("baseline_motion_mae_mean", 0.08),
                       ("autoencoder_motion_mae_mean", 0.05), ("ssim_mean", 0.7), ("baseline_psnr_mean", 30.0)):
        assert meta[key] == pytest.approx(value + 0.01 / 4), key
    assert meta["n"] == 4 and meta["ssim_vs_ceiling"] == pytest.approx(meta["ssim_mean"] / meta["autoencoder_ssim_mean"])


def test_an_evaluation_from_before_the_latent_copy_still_shows_its_metadata(tmp_path):
    old = Evaluation("next1", 0, "c", "s", {"basic": eval_set(tmp_path)})  # no latent copy, no motion region
    meta = old.metadata()
    assert meta["ssim_mean"] == pytest.approx(0.7) and math.isnan(meta["latent_copy_ssim_mean"])
    assert math.isnan(meta["basic_motion_psnr_mean"])
    assert meta["scores"][0] == {"eval_set": "basic", "method": "model", "ssim": 0.7, "psnr": 20.0,
                                 "motion_psnr": None, "n": 3}
    assert old.problems() == []  # the latent copy's range is checked only where it was measured
    assert "latent copy psnr" in eval_set(tmp_path, latent_copy_mean={"ssim": 0.5, "psnr": -1.0}).problems()[0]
