"""The one `Definitions` of PECN (loaded by workspace.yaml and `dagster dev`)."""

from __future__ import annotations

import dagster as dg

from pecn_assets.assets import data, evaluation, pix2pix, pretrained, progress
from pecn_assets.jobs import EXECUTOR, JOBS, SCHEDULES, SENSORS
from pecn_assets.resources import default_resources

ASSETS = [
    data.raw_annotations, data.raw_videos, data.filtered_annotations, data.frame_cache,
    pretrained.pix2pix_base, pretrained.resnet_base, pretrained.clip_text_base,
    progress.pacnet, progress.progress_estimates,
    pix2pix.ip2p_model,
    evaluation.evaluation, evaluation.copy_frame_baseline, evaluation.t_tests, evaluation.summary_report,
]

defs = dg.Definitions(
    assets=ASSETS,
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources=default_resources(),
    executor=EXECUTOR,
)
