"""The `frame_cache` asset itself on a small data folder: a short first video does not break it."""

import json

import dagster as dg
import numpy as np

from pecn_assets.assets.data import frame_cache, preview_indices
from pecn_assets.partitions import resolution_partitions
from pecn_assets.resources import PecnSettings
from pecn_ml.data.video import encode_webm
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


def test_short_first_video_gets_a_preview_of_frames_it_has(tmp_path):
    settings = PecnSettings(profile="smoke", data_dir=str(_data(tmp_path / "data")),
                            outputs_dir=str(tmp_path / "outputs"), results_dir=str(tmp_path / "results"))
    partition = min(resolution_partitions.get_partition_keys(), key=int)
    for _ in range(2):  # a rerun reuses the cache and builds the same preview
        result = dg.materialize([frame_cache], partition_key=partition, resources={"settings": settings},
                                instance=dg.DagsterInstance.ephemeral())
        assert result.success
        meta = result.asset_materializations_for_node("frame_cache")[0].metadata
        assert meta["failed"].value == 0
        assert "video 101: frames 0, 11 of 12" in meta["preview"].value
        preview = tmp_path / "data" / f"frames_{partition}x{partition}" / "_preview"
        assert sorted(p.name for p in preview.iterdir()) == ["101_frame_00000.png", "101_frame_00011.png"]
