"""The whole asset graph on the smoke profile (two training seeds): every asset materialises,
metadata contracts hold, lineage answers "which checkpoint produced this number", a retrained
variant leaves every earlier evaluation verifiable, and PAC-Net's estimates reach the prompts."""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from pecn_ml.sampling import checkpoint_sha256
from pecn_ml.utils.files import folder_manifest, manifest_sha256, sha256_file

pytestmark = pytest.mark.xdist_group("smoke_graph")

VARIANTS = ["next1", "next1_progress", "next5", "next5_progress", "next1_shuffled", "next5_shuffled"]


def latest(instance, asset, partition=None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"{asset} {partition} was not materialised"
    return records[0]


def meta(record) -> dict:
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


def run(smoke_graph, asset: str, partition=None, config=None) -> dg.ExecuteInProcessResult:
    """Materialise one asset partition (with its checks) in the smoke instance, as the UI would."""
    job = smoke_graph.defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=smoke_graph.instance, asset_selection=[dg.AssetKey(asset)],
                                    partition_key=partition, raise_on_error=False,
                                    run_config={"ops": {asset: {"config": config}}} if config else None)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def assert_verifiable(evaluation_meta: dict) -> None:
    """An evaluation's numbers can be traced: its checkpoint exists and its manifest (every file the
    pipeline loads) hashes to the recorded sha."""
    checkpoint = Path(evaluation_meta["checkpoint"])
    assert checkpoint_sha256(checkpoint) == evaluation_meta["checkpoint_sha256"]
    for eval_set in ("basic", "backforth"):
        results = json.loads(Path(evaluation_meta[f"{eval_set}_results_json"]).read_text())
        assert results["checkpoint_sha256"] == evaluation_meta["checkpoint_sha256"]


def test_definitions_load():
    from pecn_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_annotations", "raw_videos", "filtered_annotations", "frame_cache", "pacnet",
            "progress_estimates", "ip2p_model", "evaluation", "copy_frame_baseline", "t_tests",
            "summary_report"} <= keys


def test_whole_graph_materialises(smoke_graph):
    assert smoke_graph.ok
    inst = smoke_graph.instance
    for key in ["96", "128", "224"]:
        m = meta(latest(inst, "frame_cache", key))
        assert m["videos"] == m["decoded"] + m["reused"] + m["failed"]
        assert m["bytes_on_disk"] > 0
    # fp32 weights, but the stand-in pix2pix's UNet is saved in fp16 (StandinConfig.unet_dtype)
    for role, per_parameter in (("pix2pix_base", 2), ("resnet_base", 4), ("clip_text_base", 4)):
        m = meta(latest(inst, role))
        assert m["parameters"] > 0 and m["bytes_on_disk"] > per_parameter * m["parameters"] * 0.99
    for head in ["regression", "classification"]:
        m = meta(latest(inst, "pacnet", head))
        assert {"val_mae", "baseline_mae", "checkpoint", "checkpoint_sha256"} <= set(m)
        assert m["checkpoint_sha256"] == manifest_sha256(folder_manifest(m["checkpoint"]))
        assert m["checkpoint_sha256_scheme"] == "manifest"
        assert m["num_processes"] == 1 and m["gpu_devices"] == [] and m["parameters"] > 0
    for seed in (0, 1):
        for variant in VARIANTS:
            m = meta(latest(inst, "ip2p_model", f"{seed}|{variant}"))
            assert {"checkpoint", "checkpoint_sha256", "final_loss", "first_loss"} <= set(m)
            assert m["seed"] == seed and f"/seed_{seed}/runs/" in m["checkpoint"]
            # trained in a Pipes child (one process, no GPU on this machine), pruned, sized
            assert m["num_processes"] == 1 and [r["rank"] for r in m["ranks"]] == [0]
            assert m["ranks"][0]["pid"] != os.getpid() and m["gpu_devices"] == []
            assert m["global_batch_size"] == m["per_process_batch_size"] * m["gradient_accumulation_steps"]
            assert m["bytes_on_disk"] >= m["model_bytes_on_disk"] > 0 and m["parameters"] > 0
            assert m["peak_rss_bytes"] > 0 and m["seconds_per_step"] > 0
    report = meta(latest(inst, "summary_report"))
    assert Path(report["workbook"]).exists()
    assert "next1" in report["summary"]


def test_two_seeds_coexist_and_the_report_shows_both(smoke_graph):
    inst = smoke_graph.instance
    shas = {seed: meta(latest(inst, "ip2p_model", f"{seed}|next1"))["checkpoint_sha256"] for seed in (0, 1)}
    assert shas[0] != shas[1]  # another seed, another model; neither replaced the other
    summary = meta(latest(inst, "summary_report"))["summary"]
    rows = [line for line in summary.splitlines() if line.startswith("| next1 |")]
    assert {line.split("|")[2].strip() for line in rows} >= {"0", "1"}  # per seed
    assert "Across training seeds (mean ± sd over seeds)" in summary
    tests = json.loads(Path(meta(latest(inst, "t_tests"))["t_test_results"]).read_text())["tests"]
    assert {r["seed"] for r in tests} == {0, 1, "mean of 2"}
    across = [r for r in tests if r["seed"] == "mean of 2"]
    assert across and all(r["n_seeds"] == 2 and "seed_mean_diff_sd" in r for r in across)
    import openpyxl

    workbook = openpyxl.load_workbook(meta(latest(inst, "summary_report"))["workbook"])
    assert workbook.sheetnames == ["evaluations", "t_tests", "across_seeds", "copy_frame_baseline"]


def _summary(results: dict, metric: str) -> float:
    """`ssim_mean` -> results["mean"]["ssim"], `autoencoder_psnr_mean` -> results["autoencoder_mean"]["psnr"]."""
    *group, name, _ = metric.split("_")
    return results["_".join(group + ["mean"])][name]


def test_evaluation_records_the_checkpoint_it_sampled(smoke_graph):
    inst = smoke_graph.instance
    for seed in (0, 1):
        for variant in ["next1", "next5_progress"]:
            key = f"{seed}|{variant}"
            ev = meta(latest(inst, "evaluation", key))
            model_record = latest(inst, "ip2p_model", key)
            model = meta(model_record)
            assert ev["checkpoint_sha256"] == model["checkpoint_sha256"]
            assert ev["ip2p_model_run_id"] == model_record.run_id
            for eval_set in ("basic", "backforth"):
                results = json.loads(Path(ev[f"{eval_set}_results_json"]).read_text())
                assert results["n"] == ev[f"{eval_set}_n"] > 0
                assert results["metadata"]["checkpoint_sha256"] == model["checkpoint_sha256"]
                for metric in ("ssim_mean", "psnr_mean", "baseline_ssim_mean", "baseline_psnr_mean",
                               "autoencoder_ssim_mean", "autoencoder_psnr_mean"):
                    assert ev[f"{eval_set}_{metric}"] == pytest.approx(_summary(results, metric)), metric
            # the partition's own summary: the mean over every sample of both results.json files
            samples = [x for s in ("basic", "backforth")
                       for x in json.loads(Path(ev[f"{s}_results_json"]).read_text())["samples"]]
            assert ev["n"] == len(samples) and ev["summary_sets"] == "basic+backforth"
            for metric, field in (("ssim_mean", "ssim"), ("psnr_mean", "psnr"), ("baseline_ssim_mean", "baseline_ssim"),
                                  ("baseline_psnr_mean", "baseline_psnr"), ("autoencoder_ssim_mean", "autoencoder_ssim"),
                                  ("autoencoder_psnr_mean", "autoencoder_psnr")):
                assert ev[metric] == pytest.approx(sum(x[field] for x in samples) / len(samples)), metric
            assert ev["ssim_vs_ceiling"] == pytest.approx(ev["ssim_mean"] / ev["autoencoder_ssim_mean"])
            # the latent copy and the motion region: per set and for the partition, from the samples
            new = [f"{p}motion_{m}" for p in ("", "latent_copy_", "baseline_", "autoencoder_") for m in ("psnr", "mae")]
            for field in ["latent_copy_ssim", "latent_copy_psnr", *new]:
                assert ev[f"{field}_mean"] == pytest.approx(sum(x[field] for x in samples) / len(samples)), field
                for s in ("basic", "backforth"):
                    rows = json.loads(Path(ev[f"{s}_results_json"]).read_text())["samples"]
                    assert ev[f"{s}_{field}_mean"] == pytest.approx(sum(x[field] for x in rows) / len(rows)), field
            record = latest(inst, "evaluation", key).asset_materialization.metadata
            assert next(iter(record)) == "scores" and len(record["scores"].records) == 8  # 2 sets x 4 methods
            assert ev["frame_cache_version"] and ev["annotations_version"]
    shas = meta(latest(inst, "t_tests"))["model_checkpoint_sha256"]
    assert shas["0|next1"] == meta(latest(inst, "ip2p_model", "0|next1"))["checkpoint_sha256"]


def test_retraining_twice_leaves_every_earlier_evaluation_verifiable(smoke_graph):
    """Retrain one variant twice (other hyper-parameters from the run config, as the Launchpad
    would): each training writes a new folder, and all three evaluations stay verifiable."""
    from pecn_ml.profiles import get_profile

    inst, key = smoke_graph.instance, "0|next1"
    evaluations = [meta(latest(inst, "evaluation", key))]
    default = get_profile("smoke").pix2pix_train.learning_rate      # what the first training used
    for learning_rate in (default / 3, default * 10):
        trained = run(smoke_graph, "ip2p_model", key, {"learning_rate": learning_rate})
        model = meta(latest(inst, "ip2p_model", key))
        assert model["train_config"]["learning_rate"] == learning_rate  # the value used is recorded
        assert trained.run_id in model["checkpoint"]
        run(smoke_graph, "evaluation", key)
        evaluations.append(meta(latest(inst, "evaluation", key)))
        assert evaluations[-1]["checkpoint_sha256"] == model["checkpoint_sha256"]
        assert evaluations[-1]["ip2p_model_run_id"] == trained.run_id
    assert len({e["checkpoint"] for e in evaluations}) == 3
    assert len({e["checkpoint_sha256"] for e in evaluations}) == 3
    for ev in evaluations:
        assert_verifiable(ev)


def test_control_arms_are_trained_evaluated_and_tested(smoke_graph):
    """next1_shuffled / next5_shuffled: trained on and evaluated with other videos' percents, on the
    same videos as the progress variant, and compared in t_tests and the summary."""
    inst = smoke_graph.instance
    for target in ("next1", "next5"):
        model = meta(latest(inst, "ip2p_model", f"0|{target}_shuffled"))
        assert model["progress_source"] == "frame count, shuffled (seed 16)"
        assert "instruct_pix2pix_224_shuffled" in model["checkpoint"]
        ev = meta(latest(inst, "evaluation", f"0|{target}_shuffled"))
        assert ev["progress_source"] == "frame count, shuffled (seed 16)"
        true = json.loads(Path(meta(latest(inst, "evaluation", f"0|{target}_progress"))["basic_results_json"]).read_text())
        shuffled = json.loads(Path(ev["basic_results_json"]).read_text())
        assert shuffled["config"]["progress_source"] == "shuffled (seed 16)"
        assert [s["video_id"] for s in shuffled["samples"]] == [s["video_id"] for s in true["samples"]]
        assert [s["true_progress_percent"] for s in shuffled["samples"]] == [s["progress_percent"] for s in true["samples"]]
        assert sorted(s["progress_percent"] for s in shuffled["samples"]) == sorted(
            s["progress_percent"] for s in true["samples"])
    tests = json.loads(Path(meta(latest(inst, "t_tests"))["t_test_results"]).read_text())["tests"]
    found = {(r["comparison"], r["without"], r["with"]) for r in tests}
    assert {("progress - shuffled", "next5_shuffled", "next5_progress"), ("shuffled - plain", "next1", "next1_shuffled"),
            ("progress - plain", "next5", "next5_progress")} <= found
    assert {r["metric"] for r in tests} == {"ssim", "psnr", "motion_psnr"}
    summary = meta(latest(inst, "summary_report"))["summary"]
    assert "| progress - shuffled |" in summary and "| next5_shuffled |" in summary


def test_the_demo_ends_with_the_prediction_table(smoke_graph):
    """`make demo`'s closing table, read back through the I/O manager: every evaluation partition
    beside latent copy, copy-frame and the ceiling, and the progress comparisons."""
    from pecn_assets.tools.demo import prediction_summary

    text = prediction_summary(smoke_graph.instance, smoke_graph.defs)
    inst = smoke_graph.instance
    for variant in ("next1", "next5_progress", "next5_shuffled"):
        md = meta(latest(inst, "evaluation", f"0|{variant}"))
        line = next(l for l in text.splitlines() if l.startswith("basic") and f" {variant} " in l)
        assert f"{md['basic_ssim_mean']:.4f}" in line and f"{md['basic_latent_copy_ssim_mean']:.4f}" in line
        assert f"{md['basic_motion_psnr_mean']:.2f}" in line
    assert "progress - shuffled" in text and "shuffled - plain" in text


def test_progress_estimator_reaches_the_prompts_and_its_sha_is_recorded(smoke_graph):
    """`use_progress_estimator`: PAC-Net's estimates (the progress_estimates input) are the
    percentages in the training and evaluation prompts, and their shas are in the metadata."""
    inst, key = smoke_graph.instance, "1|next1_progress"
    estimates = meta(latest(inst, "progress_estimates"))
    rows = json.loads(Path(estimates["path"]).read_text())["rows"]
    percent = {r["video_id"]: int(r["estimate_percent"]) for r in rows}
    estimates_sha = sha256_file(estimates["path"])
    pacnet_sha = meta(latest(inst, "pacnet", "regression"))["checkpoint_sha256"]

    run(smoke_graph, "ip2p_model", key, {"use_progress_estimator": True})
    model = meta(latest(inst, "ip2p_model", key))
    assert model["progress_source"] == "PAC-Net"
    assert model["progress_estimates_sha256"] == estimates_sha and model["pacnet_checkpoint_sha256"] == pacnet_sha

    run(smoke_graph, "evaluation", key, {"use_progress_estimator": True})
    ev = meta(latest(inst, "evaluation", key))
    assert ev["progress_source"] == "PAC-Net" and ev["progress_estimates_sha256"] == estimates_sha
    results = json.loads(Path(ev["basic_results_json"]).read_text())
    assert results["config"]["progress_source"] == "PAC-Net estimate"
    for sample in results["samples"]:
        assert sample["progress_percent"] == percent[sample["video_id"]]
        assert f"And {percent[sample['video_id']]}% of the action has been completed." in sample["prompt"]
    assert results["metadata"]["progress_estimates_sha256"] == estimates_sha


def test_every_check_ran_and_the_blocking_ones_passed(smoke_graph):
    inst = smoke_graph.instance
    keys = [dg.AssetCheckKey(dg.AssetKey(asset), name) for asset, name in (
        ("ip2p_model", "loss_decreased"), ("pacnet", "beats_mean_predictor"),
        ("evaluation", "samples_and_ranges"), ("evaluation", "beats_copy_frame"),
        ("evaluation", "predicts_motion"))]
    for key in keys:
        history = inst.event_log_storage.get_asset_check_execution_history(key, limit=100)
        assert history, f"{key.to_user_string()} never ran"
        for record in history:
            evaluation = record.event.dagster_event.event_specific_data if record.event else None
            if evaluation is not None and not evaluation.passed:
                assert evaluation.severity == dg.AssetCheckSeverity.WARN, (key, evaluation.description)


def test_every_model_folder_has_a_card_and_pacnet_picks_its_epoch_on_training_videos(smoke_graph):
    """Issue 18: a model card in every model folder (stand-ins, PAC-Net heads, InstructPix2Pix
    variants) naming its run, seed, config, data and losses, the folder still loading; PAC-Net's
    selection split is written, disjoint from the evaluation videos, which give its test score."""
    import torch

    from pecn_ml.model_cards import read_card
    from pecn_ml.models.pacnet import load_pacnet
    from pecn_ml.sampling import load_pipeline

    inst = smoke_graph.instance
    files = meta(latest(inst, "filtered_annotations"))["files"]
    eval_ids = {e["id"] for f in files if "val_filtered" in f for e in json.loads(Path(f).read_text())}
    train_ids = {e["id"] for f in files if f.endswith("train_filtered.json") for e in json.loads(Path(f).read_text())}
    folders = {}
    for role in ("pix2pix_base", "resnet_base", "clip_text_base"):
        record = latest(inst, role)
        folders[role] = (meta(record)["path"], record.run_id)
    for head in ("regression", "classification"):
        record = latest(inst, "pacnet", head)
        m = meta(record)
        split = json.loads(Path(m["selection_split"]).read_text())
        assert split["ids"] and set(split["ids"]) <= train_ids and not set(split["ids"]) & eval_ids
        assert m["num_selection"] == m["num_val"] == len(split["ids"]) and m["num_train"] == len(train_ids) - len(split["ids"])
        assert m["num_test"] == split["num_test"] > 0 and 0 <= m["test_mae"] <= 100 and 0 <= m["test_baseline_mae"] <= 100
        load_pacnet(m["checkpoint"])
        folders[f"pacnet {head}"] = (m["checkpoint"], record.run_id)
    estimates = meta(latest(inst, "progress_estimates"))["mae_by_task"]
    assert {"val", "train", "selection"} <= set(estimates)
    for variant in ("next1", "next5_progress"):
        record = latest(inst, "ip2p_model", f"0|{variant}")
        folders[variant] = (meta(record)["checkpoint"], record.run_id)
        card = read_card(folders[variant][0]).data
        assert card.variant == variant and card.base_weights[0]["role"] == "pix2pix_base" and card.prompt_form
        assert {"annotations", "frame_cache"} <= set(card.data_versions)
        load_pipeline(folders[variant][0], torch.device("cpu"), torch.float32)
    for name, (folder, run_id) in folders.items():
        card = read_card(folder).data.to_dict()
        # the run that built the folder (a stand-in folder is content-addressed: a later run may reuse it)
        asset = name.split()[0] if name.startswith("pacnet") else name if name.endswith("_base") else "ip2p_model"
        runs = {r.run_id for r in inst.fetch_materializations(dg.AssetKey(asset), limit=1000).records}
        assert card["dagster_run_id"] == run_id or card["dagster_run_id"] in runs, name
        assert card["license"] and card["training_config"] and card["loss_summary"] and "seed" in card, name
    assert read_card(folders["clip_text_base"][0]).data.loss_summary == {"trained": False}   # random, untrained
