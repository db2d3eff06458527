"""Evaluation assets: every trained model (training seed x variant) on both eval sets, the
copy-frame baseline, t-tests per seed and across seeds, and the Excel report."""

from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import dagster as dg

from pecn_assets.assets.pix2pix import progress_source
from pecn_assets.automation import Automation
from pecn_assets.configs import ProgressSourceConfig
from pecn_assets.gpu import claimed_gpus, gpu_asset_args, not_retried_when_hopeless, torch_device
from pecn_assets.metadata import image_md, materialized
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings
from pecn_assets.runs import run_dir
from pecn_ml.artifacts import (ArtifactChanged, CopyFrameBaseline, EvalSetResult, Evaluation, FilteredAnnotations,
                               FrameCacheRef, Pix2PixCheckpoint, ProgressEstimates, TTests, Workbook)
from pecn_ml.deployment import Deployment
from pecn_ml.report import across_seeds, evaluation_row, markdown_summary, write_summary_workbook
from pecn_ml.sampling import SamplingConfig, evaluate_model, select_samples
from pecn_ml.sampling import copy_frame_baseline as compute_copy_frame_baseline
from pecn_ml.stats import seed_t_test_table, write_t_tests
from pecn_ml.utils.files import sha256_file, sha256_json, write_json_atomic
from pecn_ml.variants import EVAL_SETS, VARIANTS


def evaluate_set(checkpoint: Pix2PixCheckpoint, cache, eval_set: str, entries: list[dict], sampling: SamplingConfig,
                 out_dir: Path, override: Optional[dict], lineage: dict, log) -> EvalSetResult:
    """Sample and score one eval set; n is checked against min(samples requested, eligible videos)."""
    expected, _ = select_samples(cache, entries, sampling.input_idx, sampling.target_idx, sampling.num_samples,
                                 prompt_text=sampling.prompt_text, selection_seed=sampling.selection_seed)
    result = evaluate_model(checkpoint.path, cache, entries, sampling, out_dir, progress_override=override,
                            extra_metadata=lineage, log=log)
    try:   # every file it covers, or for an older handle the UNet's (with a warning)
        checkpoint.verify()
    except ArtifactChanged as e:
        raise ArtifactChanged(f"{checkpoint.path} changed while it was evaluated ({e})") from None
    return EvalSetResult.from_results(eval_set, result.results_json, len(expected))


def results_by_model(evaluation: dict[str, Evaluation]) -> dict[tuple[int, str, str], dict]:
    """{(seed, variant, eval set): results.json} of every evaluation partition (shas checked)."""
    return {(e.seed, e.variant, s): e.results(s) for e in evaluation.values() for s in e.sets}


def evaluation_rows(evaluation: dict[str, Evaluation]) -> list[dict]:
    """One report row per training seed x variant x eval set."""
    rows = []
    for e in sorted(evaluation.values(), key=lambda e: (e.variant, e.seed)):
        v = VARIANTS[e.variant]
        progress = "shuffled" if v.shuffled_progress else v.add_progress
        rows += [{**evaluation_row(e.variant, s, e.results(s), model=v.seed_name, target_idx=v.target_idx,
                                   progress=progress), "seed": e.seed} for s in e.sets]
    return rows


def build_evaluation_assets(parts: Partitions, automation: Automation = Automation(),
                            deployment: Deployment = Deployment()) -> list:
    """evaluation (per training seed x variant; follows its ip2p_model partition), copy_frame_baseline (per
    eval set), t_tests, summary_report."""
    profile = parts.profile
    at_pix2pix_resolution = parts.frame_cache_at(profile.pix2pix_resolution)

    @dg.asset(group_name="evaluation", partitions_def=parts.model, kinds={"pytorch", "json"}, code_version="3",
              ins=at_pix2pix_resolution, automation_condition=automation.follow("ip2p_model"),
              **gpu_asset_args(1, deployment))
    @not_retried_when_hopeless
    def evaluation(context: dg.AssetExecutionContext, config: ProgressSourceConfig, settings: PecnSettings,
                   filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef, ip2p_model: Pix2PixCheckpoint,
                   progress_estimates: Optional[ProgressEstimates]) -> dg.MaterializeResult:
        """Samples one trained model (seed x variant) on every eval set; SSIM/PSNR and motion-region PSNR/MAE per sample beside the latent copy, the copy-frame baseline and the VAE ceiling."""
        variant, cache = VARIANTS[ip2p_model.variant], frame_cache.open()
        override, progress_meta = progress_source(config.use_progress_estimator, progress_estimates, variant)
        sampling = replace(profile.sampling, input_idx=variant.input_idx, target_idx=variant.target_idx,
                           add_progress=variant.add_progress, progress_shuffle_seed=variant.shuffle_seed,
                           prompt_text=profile.prompt_text)
        lineage = {"checkpoint": ip2p_model.path, "checkpoint_sha256": ip2p_model.sha256, "seed": ip2p_model.seed,
                   "frame_cache_version": frame_cache.version, "annotations_version": filtered_annotations.version,
                   **progress_meta}
        with claimed_gpus(context, settings, 1, profile) as claim:
            sampling = replace(sampling, device=torch_device(claim))
            out = settings.results_path() / f"seed_{ip2p_model.seed}"
            sets = {s: evaluate_set(ip2p_model, cache, s, filtered_annotations.eval_set(s), sampling,
                                    run_dir(out / f"{variant.seed_name}_eval_{s}", context), override, lineage,
                                    context.log.info) for s in EVAL_SETS}
        grids = [Path(r.results_json).parent / "comparison_grid.png" for r in sets.values()]
        return materialized(
            Evaluation(ip2p_model.variant, ip2p_model.seed, ip2p_model.path, ip2p_model.sha256, sets,
                       progress_meta["progress_source"], checkpoint_sha256_scheme=ip2p_model.sha256_scheme,
                       checkpoint_files=ip2p_model.files), sha256_json({s: r.sha256 for s, r in sets.items()}),
            comparison_grid=dg.MetadataValue.md(image_md([g for g in grids if g.is_file()],
                                                         f"{' / '.join(sets)}: Input | GT | Output | VAE(GT) | "
                                                         f"VAE(Input)")),
            sampling_config=asdict(sampling), ip2p_model_run_id=dg.MetadataValue.dagster_run(ip2p_model.run_id),
            frame_cache_version=frame_cache.version, annotations_version=filtered_annotations.version,
            pix2pix_base_sha256=ip2p_model.base_sha256, **claim.metadata(), **progress_meta)

    @dg.asset(group_name="evaluation", partitions_def=parts.eval_set, kinds={"json"}, code_version="3",
              ins=at_pix2pix_resolution)
    def copy_frame_baseline(context: dg.AssetExecutionContext, settings: PecnSettings,
                            filtered_annotations: FilteredAnnotations, frame_cache: FrameCacheRef) -> dg.MaterializeResult:
        """"Predict the input frame unchanged": SSIM/PSNR and motion-region PSNR for targets 21 and 25 on the same samples."""
        eval_set, cache, s = context.partition_key, frame_cache.open(), profile.sampling
        results = {str(t): compute_copy_frame_baseline(cache, filtered_annotations.eval_set(eval_set), s.input_idx, t,
                                                       s.num_samples, selection_seed=s.selection_seed)
                   for t in sorted({v.target_idx for v in VARIANTS.values()})}
        path = write_json_atomic(run_dir(settings.results_path() / f"copy_frame_baseline_{eval_set}", context)
                                 / "results.json", results)
        by_target = {t: {"ssim": r["mean"]["ssim"], "psnr": r["mean"]["psnr"], "motion_psnr": r["mean"]["motion_psnr"],
                         "n": r["n"], "ids_sha256": r["selection"]["ids_sha256"]} for t, r in results.items()}
        sha = sha256_file(path)
        return materialized(CopyFrameBaseline(str(path), sha, eval_set=eval_set, by_target=by_target), sha)

    return [evaluation, copy_frame_baseline, t_tests, summary_report]


@dg.asset(group_name="evaluation", kinds={"json", "scipy"}, code_version="2")
def t_tests(context: dg.AssetExecutionContext, settings: PecnSettings,
            evaluation: dict[str, Evaluation]) -> dg.MaterializeResult:
    """Paired and Welch t-tests of progress - plain, progress - shuffled and shuffled - plain, per seed and on per-video means over seeds."""
    rows = seed_t_test_table(results_by_model(evaluation))
    path = write_t_tests(rows, run_dir(settings.results_path() / "t_tests", context) / "t_test_results.json")
    sha = sha256_file(path)
    artifact = TTests(str(path), sha, len(rows), tuple(sorted({e.seed for e in evaluation.values()})),
                      {key: e.checkpoint_sha256 for key, e in sorted(evaluation.items())})
    return materialized(artifact, sha, summary=dg.MetadataValue.md(markdown_summary([], rows)))


@dg.asset(group_name="evaluation", kinds={"excel"}, code_version="2")
def summary_report(context: dg.AssetExecutionContext, settings: PecnSettings, t_tests: TTests,
                   evaluation: dict[str, Evaluation],
                   copy_frame_baseline: dict[str, CopyFrameBaseline]) -> dg.MaterializeResult:
    """The Excel summary (t_test_summary.xlsx): evaluations per seed and across seeds, copy-frame baselines, t-tests; shown as Markdown too."""
    rows, tests = evaluation_rows(evaluation), t_tests.rows()
    across = across_seeds(rows)
    baselines = [r for b in copy_frame_baseline.values() for r in b.rows()]
    path = write_summary_workbook(rows, tests, run_dir(settings.results_path() / "reports", context)
                                  / "t_test_summary.xlsx", across=across, baselines=baselines)
    workbook = Workbook(str(path), sha256_file(path))
    return materialized(
        workbook, workbook.sha256,
        summary=dg.MetadataValue.md(markdown_summary(rows, tests, across)),
        model_checkpoint_sha256=t_tests.models, t_tests_sha256=t_tests.sha256)
