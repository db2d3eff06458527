"""Asset checks on the trained models and their evaluations (the UI's Checks tab). A blocking ERROR
stops everything downstream, in this run and later ones (the I/O manager refuses the artifact); the
rules live with the artifact types (`problems()`, `warnings()` in pecn_ml.artifacts)."""

import dagster as dg

from pecn_assets.io_manager import CHECK_OP_TAG
from pecn_assets.partitions import Partitions
from pecn_ml.artifacts import Artifact, Evaluation, PacNetCheckpoint, Pix2PixCheckpoint

TAGS = {CHECK_OP_TAG: "true"}


def check_result(problems: list[str], warnings: list[str], **metadata) -> dg.AssetCheckResult:
    """ERROR with the problems, else WARN with the warnings, else passed."""
    if problems or warnings:
        severity = dg.AssetCheckSeverity.ERROR if problems else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(passed=False, severity=severity, description="; ".join(problems + warnings),
                                   metadata=metadata)
    return dg.AssetCheckResult(passed=True, metadata=metadata)


def artifact_check(artifact: Artifact, **metadata) -> dg.AssetCheckResult:
    return check_result(artifact.problems(), artifact.warnings(), **metadata)


def predicts_motion(evaluation: Evaluation) -> dg.AssetCheckResult:
    """WARN unless the model beats the latent copy in motion-region PSNR on every eval set."""
    warnings, metadata = evaluation.predicts_motion()
    return check_result([], warnings, **metadata)


def build_checks(parts: Partitions) -> list[dg.AssetChecksDefinition]:
    """The checks of the partitioned model and evaluation assets of one deployment."""

    @dg.asset_check(asset="ip2p_model", name="loss_decreased", blocking=True, partitions_def=parts.model,
                    op_tags=TAGS, description="Final loss finite and below the first logged (epoch means).")
    def ip2p_loss_decreased(ip2p_model: Pix2PixCheckpoint) -> dg.AssetCheckResult:
        return artifact_check(ip2p_model, first_loss=ip2p_model.first_loss, final_loss=ip2p_model.final_loss,
                              steps=ip2p_model.steps, loss_window=ip2p_model.loss_window)

    @dg.asset_check(asset="pacnet", name="beats_mean_predictor", blocking=True, partitions_def=parts.head,
                    op_tags=TAGS, description="Test MAE (evaluation videos) below the mean predictor's "
                                              "(test_baseline_mae; older checkpoints: val_mae vs baseline_mae).")
    def pacnet_beats_mean_predictor(pacnet: PacNetCheckpoint) -> dg.AssetCheckResult:
        test = ({"test_mae": pacnet.test_mae, "test_baseline_mae": pacnet.test_baseline_mae, "num_test": pacnet.num_test}
                if pacnet.num_test else {})
        return artifact_check(pacnet, val_mae=pacnet.val_mae, baseline_mae=pacnet.baseline_mae, num_val=pacnet.num_val,
                              **test)

    @dg.asset_check(asset="evaluation", name="samples_and_ranges", blocking=True, partitions_def=parts.model,
                    op_tags=TAGS, description="n equals the samples requested; SSIM and PSNR finite and in range.")
    def evaluation_samples_and_ranges(evaluation: Evaluation) -> dg.AssetCheckResult:
        return check_result(evaluation.problems(), [], **{f"{s}_n": r.n for s, r in evaluation.sets.items()},
                            **{f"{s}_n_expected": r.n_expected for s, r in evaluation.sets.items()})

    @dg.asset_check(asset="evaluation", name="beats_copy_frame", blocking=False, partitions_def=parts.model,
                    op_tags=TAGS, description="WARN when the model scores below the copy-frame baseline.")
    def evaluation_beats_copy_frame(evaluation: Evaluation) -> dg.AssetCheckResult:
        return check_result([], evaluation.warnings(),
                            **{f"{s}_{m}_margin": float(r.mean[m] - r.baseline_mean[m])
                               for s, r in evaluation.sets.items() for m in ("ssim", "psnr")})

    @dg.asset_check(asset="evaluation", name="predicts_motion", blocking=False, partitions_def=parts.model,
                    op_tags=TAGS, description="WARN unless the model's motion-region PSNR is above the latent "
                                              "copy's on every eval set (paired by video, one-sided p < 0.05).")
    def evaluation_predicts_motion(evaluation: Evaluation) -> dg.AssetCheckResult:
        return predicts_motion(evaluation)

    return [ip2p_loss_decreased, pacnet_beats_mean_predictor, evaluation_samples_and_ranges,
            evaluation_beats_copy_frame, evaluation_predicts_motion]
