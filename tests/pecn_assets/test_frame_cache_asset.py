"""The `frame_cache` asset itself on a small data folder: a short first video does not break it."""

import json

import dagster as dg
import numpy as np

from pecn_assets.assets.data import build_data_assets, filtered_artifact, preview_indices
from pecn_assets.io_manager import ArtifactIOManager
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.artifacts import FilteredAnnotations
from pecn_ml.data.video import encode_webm
from pecn_ml.profiles import get_profile
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

LENGTHS = {"101": 12, "102": 30}  # the first video has no frame 20


def _entry(video_id: str) -> dict:
    return {"id": video_id, "label": "pushing a cup from left to right",
            "template": "Pushing [something] from left to right", "placeholders": ["a cup"],
            "task": "push"}


def _data(root):
    (root / "videos").mkdir(parents=True)
    for vid, n in LENGTHS.items():
        frames = np.zeros((n, 32, 48, 3), np.uint8)
        for t in range(n):
            frames[t, 8:20, t:t + 10] = 200
        encode_webm(root / "videos" / f"{vid}.webm", frames)
    (root / "annotations").mkdir()
    for name in (TRAIN_FILE, *EVAL_SETS.values()):
        (root / "annotations" / name).write_text(json.dumps([_entry(v) for v in LENGTHS]))
    return root


def test_preview_indices_exist_in_short_videos():
    assert preview_indices(40) == [0, 20, 39]
    assert preview_indices(21) == [0, 20]
    assert preview_indices(12) == [0, 11]
    assert preview_indices(1) == [0]


@dg.asset(name="filtered_annotations")
def filtered_annotations_as_written(settings: PecnSettings) -> FilteredAnnotations:
    """The filtered files the test wrote, as the real asset's artifact."""
    return filtered_artifact(settings)


def test_short_first_video_gets_a_preview_of_frames_it_has(tmp_path):
    profile = get_profile("smoke")
    settings = PecnSettings.for_profile(profile, data_dir=str(_data(tmp_path / "data")),
                                        outputs_dir=str(tmp_path / "outputs"), results_dir=str(tmp_path / "results"))
    parts = Partitions.build(profile, (0,))
    frame_cache = next(a for a in build_data_assets(parts) if a.key == dg.AssetKey("frame_cache"))
    partition = min(parts.resolution.get_partition_keys(), key=int)
    resources = {"settings": settings, "io_manager": ArtifactIOManager(root=str(tmp_path / "artifacts"))}
    instance = dg.DagsterInstance.ephemeral()
    assets = [filtered_annotations_as_written, frame_cache]
    assert dg.materialize(assets, selection=["filtered_annotations"], resources=resources, instance=instance).success
    for _ in range(2):  # a rerun reuses the cache and builds the same preview
        result = dg.materialize(assets, selection=["frame_cache"], partition_key=partition, resources=resources,
                                instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("frame_cache")[0].metadata
        assert meta["failed"].value == 0
        assert "video 101: frames 0, 11 of 12" in meta["preview"].value
        preview = tmp_path / "data" / f"frames_{partition}x{partition}" / "_preview"
        assert sorted(p.name for p in preview.iterdir()) == ["101_frame_00000.png", "101_frame_00011.png"]
