"""Evaluation assets: 8 evaluations (variant x eval set), copy-frame baseline, t-tests, Excel report."""


import json
from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg

from pecn_assets.assets.data import filtered_annotations, frame_cache
from pecn_assets.assets.pix2pix import ProgressSourceConfig, estimator_override, ip2p_model
from pecn_assets.gpu import gpu_asset_args
from pecn_assets.lineage import latest_upstream
from pecn_assets.metadata import image_md
from pecn_assets.partitions import (PROFILE, eval_set_partitions, evaluation_partitions,
                                    from_resolution)
from pecn_assets.resources import PecnSettings
from pecn_ml.data.annotations import load_filtered
from pecn_ml.data.frame_cache import open_frame_cache
from pecn_ml.report import markdown_summary, write_summary_workbook
from pecn_ml.sampling import copy_frame_baseline as compute_copy_frame_baseline
from pecn_ml.sampling import evaluate_model
from pecn_ml.stats import t_test_table, write_t_tests
from pecn_ml.utils.files import sha256_file, write_json_atomic
from pecn_ml.variants import EVAL_SETS, VARIANTS


def seed_dir(settings: PecnSettings) -> Path:
    """The seed's `test_result/seed_{SEED}/` folder."""
    return settings.results_path() / f"seed_{settings.get_profile().sampling.seed}"


@dg.asset(
    group_name="evaluation", partitions_def=evaluation_partitions, kinds={"pytorch", "json"},
    code_version="1",
    deps=[filtered_annotations,
          dg.AssetDep(ip2p_model, partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
              partition_dimension_name="variant")),
          dg.AssetDep(frame_cache, partition_mapping=from_resolution(PROFILE.pix2pix_resolution))],
    **gpu_asset_args(),
)
def evaluation(context: dg.AssetExecutionContext, config: ProgressSourceConfig,
               settings: PecnSettings) -> dg.MaterializeResult:
    """Samples one trained variant on one eval set; SSIM/PSNR per sample beside the copy-frame baseline."""
    keys = context.partition_key.keys_by_dimension
    variant, eval_set = VARIANTS[keys["variant"]], keys["eval_set"]
    profile = settings.get_profile()
    model = latest_upstream(context.instance, "ip2p_model", variant.name)
    checkpoint = model.metadata["checkpoint"]
    sha = sha256_file(Path(checkpoint) / "unet" / "diffusion_pytorch_model.safetensors")
    if sha != model.metadata["checkpoint_sha256"]:
        raise dg.Failure(f"{checkpoint} changed since ip2p_model/{variant.name} was materialised "
                         f"(sha {sha[:12]} != {model.metadata['checkpoint_sha256'][:12]})")
    cache = open_frame_cache(settings.data_path(), profile.pix2pix_resolution)
    entries = load_filtered(settings.annotations_path() / EVAL_SETS[eval_set])
    override, progress_meta = estimator_override(context, config.use_progress_estimator)
    sampling = replace(profile.sampling, input_idx=variant.input_idx, target_idx=variant.target_idx,
                       add_progress=variant.add_progress, prompt_text=profile.prompt_text)
    annotations = latest_upstream(context.instance, "filtered_annotations")
    lineage = {"checkpoint": checkpoint, "checkpoint_sha256": sha, "ip2p_model_run_id": model.run_id,
               "frame_cache_version": cache.version, "annotations_version": annotations.data_version}
    out_dir = seed_dir(settings) / f"{variant.seed_name}_eval_{eval_set}"
    result = evaluate_model(checkpoint, cache, entries, sampling, out_dir, progress_override=override,
                            extra_metadata=lineage, log=context.log.info)
    return dg.MaterializeResult(
        metadata={
            "ssim_mean": float(result.mean["ssim"]), "psnr_mean": float(result.mean["psnr"]),
            "ssim_std": float(result.std["ssim"]), "psnr_std": float(result.std["psnr"]),
            "baseline_ssim_mean": float(result.baseline_mean["ssim"]),
            "baseline_psnr_mean": float(result.baseline_mean["psnr"]),
            "autoencoder_ssim_mean": float(result.autoencoder_mean["ssim"]),
            "autoencoder_psnr_mean": float(result.autoencoder_mean["psnr"]),
            "ssim_vs_ceiling": float(result.mean["ssim"] / result.autoencoder_mean["ssim"]),
            "n": result.n,
            "checkpoint_sha256": sha,
            "checkpoint": dg.MetadataValue.path(checkpoint),
            **model.as_metadata("ip2p_model"),
            "pix2pix_base_sha256": model.metadata.get("pix2pix_base_sha256", ""),
            "results_json": dg.MetadataValue.path(str(result.results_json)),
            "frame_cache_version": cache.version,
            "annotations_version": annotations.data_version or "",
            "sampling_config": dg.MetadataValue.json(json.loads(json.dumps(asdict(sampling), default=str))),
            "comparison_grid": dg.MetadataValue.md(image_md([result.grid_png], "Input | GT | Output | VAE(GT)"))
            if result.grid_png else "none",
            "comparison_dir": dg.MetadataValue.path(str(out_dir / "comparison")),
            **progress_meta,
        },
        data_version=dg.DataVersion(sha256_file(result.results_json)),
    )


@dg.asset(group_name="evaluation", partitions_def=eval_set_partitions, kinds={"json"}, code_version="1",
          deps=[filtered_annotations,
                dg.AssetDep(frame_cache, partition_mapping=from_resolution(PROFILE.pix2pix_resolution))])
def copy_frame_baseline(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
    """"Predict the input frame unchanged": SSIM/PSNR for targets 21 and 25 on the same samples."""
    profile = settings.get_profile()
    eval_set = context.partition_key
    cache = open_frame_cache(settings.data_path(), profile.pix2pix_resolution)
    entries = load_filtered(settings.annotations_path() / EVAL_SETS[eval_set])
    targets = sorted({v.target_idx for v in VARIANTS.values()})
    results = {str(t): compute_copy_frame_baseline(cache, entries, profile.sampling.input_idx, t,
                                                   profile.sampling.num_samples) for t in targets}
    path = write_json_atomic(seed_dir(settings) / f"copy_frame_baseline_{eval_set}" / "results.json", results)
    metadata: dict = {"results_json": dg.MetadataValue.path(str(path))}
    for t, r in results.items():
        metadata.update({f"target{t}_ssim_mean": float(r["mean"]["ssim"]),
                         f"target{t}_psnr_mean": float(r["mean"]["psnr"]), f"target{t}_n": r["n"]})
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(sha256_file(path)))


def _evaluations(context) -> dict:
    """The latest materialisation of each of the 8 evaluation partitions, with its results."""
    out = {}
    for key in evaluation_partitions.get_partition_keys():
        up = latest_upstream(context.instance, "evaluation", key)
        dims = key.keys_by_dimension
        results = json.loads(Path(up.metadata["results_json"]).read_text(encoding="utf-8"))
        out[(dims["variant"], dims["eval_set"])] = (up, results)
    return out


@dg.asset(group_name="evaluation", kinds={"json", "scipy"}, code_version="1", deps=[evaluation])
def t_tests(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
    """With- vs without-progress t-tests (paired by video and Welch) per target, eval set and metric."""
    evals = _evaluations(context)
    rows = t_test_table({k: results for k, (_, results) in evals.items()})
    path = write_t_tests(rows, seed_dir(settings) / "t_test_results.json")
    shas = {f"{v}/{s}": up.metadata["checkpoint_sha256"] for (v, s), (up, _) in evals.items()}
    return dg.MaterializeResult(
        metadata={"t_test_results": dg.MetadataValue.path(str(path)), "tests": len(rows),
                  "model_checkpoint_sha256": dg.MetadataValue.json(shas),
                  "summary": dg.MetadataValue.md(markdown_summary([], rows))},
        data_version=dg.DataVersion(sha256_file(path)),
    )


@dg.asset(group_name="evaluation", kinds={"excel"}, code_version="1",
          deps=[t_tests, evaluation, copy_frame_baseline])
def summary_report(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
    """The Excel summary (t_test_summary.xlsx): all evaluations and the t-tests, shown as Markdown too."""
    evals = _evaluations(context)
    rows = []
    for (variant, eval_set), (up, results) in sorted(evals.items()):
        v = VARIANTS[variant]
        rows.append({"variant": variant, "model": v.seed_name, "eval_set": eval_set,
                     "target_idx": v.target_idx, "progress": v.add_progress, "n": results["n"],
                     "ssim_mean": results["mean"]["ssim"], "ssim_std": results["std"]["ssim"],
                     "psnr_mean": results["mean"]["psnr"], "psnr_std": results["std"]["psnr"],
                     "baseline_ssim": results["baseline_mean"]["ssim"],
                     "baseline_psnr": results["baseline_mean"]["psnr"],
                     "autoencoder_ssim": results["autoencoder_mean"]["ssim"],
                     "autoencoder_psnr": results["autoencoder_mean"]["psnr"],
                     "checkpoint_sha256": up.metadata["checkpoint_sha256"]})
    t_test_record = latest_upstream(context.instance, "t_tests")
    tests = json.loads(Path(t_test_record.metadata["t_test_results"]).read_text(encoding="utf-8"))["tests"]
    path = write_summary_workbook(rows, tests, seed_dir(settings) / "t_test_summary.xlsx")
    return dg.MaterializeResult(
        metadata={"workbook": dg.MetadataValue.path(str(path)),
                  "summary": dg.MetadataValue.md(markdown_summary(rows, tests)),
                  "model_checkpoint_sha256": dg.MetadataValue.json(
                      {f"{r['variant']}/{r['eval_set']}": r["checkpoint_sha256"] for r in rows}),
                  **t_test_record.as_metadata("t_tests")},
        data_version=dg.DataVersion(sha256_file(path)),
    )
