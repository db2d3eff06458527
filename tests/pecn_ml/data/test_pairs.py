"""FramePairDataset: pairs from the frame cache, skips, prompts with progress, collation."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pecn_ml.data.pairs import FramePairDataset, collate_pairs, frame_to_tensor
from pecn_ml.prompts import build_prompt


class FakeFrameCache:
    """In-memory frame cache with the real one's contract (KeyError for unknown videos)."""

    def __init__(self, lengths, resolution=16, version="fake-v1"):
        self.lengths, self.resolution, self.version = dict(lengths), resolution, version
        self.reads = 0

    def num_frames(self, video_id):
        return self.lengths[video_id]  # KeyError when not cached

    def frame(self, video_id, idx):
        n = self.lengths[video_id]
        if not 0 <= idx < n:
            raise IndexError(f"frame {idx} of {video_id} ({n} frames)")
        self.reads += 1
        r = self.resolution
        rng = np.random.default_rng([int(video_id), idx])
        return rng.integers(0, 256, (r, r, 3), dtype=np.uint8)


def entry(vid, label="moving something up"):
    return {"id": vid, "label": label, "template": "Moving [something] up",
            "placeholders": ["something"], "task": "move_object"}


@pytest.fixture()
def cache():
    # 25 frames: frames 0..24 exist, so frame 25 does not; 26 frames: frame 25 exists
    return FakeFrameCache({"1": 40, "2": 25, "3": 26, "4": 22, "5": 21, "6": 30})


def test_items_are_normalised_pairs_from_the_cache(cache):
    ds = FramePairDataset(cache, [entry("1", "moving a pen up")], input_idx=20, target_idx=21)
    item = ds[0]
    assert item["video_id"] == "1"
    # the class text (template without brackets), as in the seed's example prompts
    assert item["prompt"] == "Generate a future frame of this action: moving something up"
    by_label = FramePairDataset(cache, [entry("1", "moving a pen up")], prompt_text="label")
    assert by_label.prompts == ["Generate a future frame of this action: moving a pen up"]
    with pytest.raises(ValueError, match="prompt_text"):
        FramePairDataset(cache, [entry("1")], prompt_text="template")
    for key, idx in (("input", 20), ("target", 21)):
        x = item[key]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
        expected = 2 * (torch.from_numpy(cache.frame("1", idx)).permute(2, 0, 1).float() / 255) - 1
        torch.testing.assert_close(x, expected)  # the seed's 2 * (x / 255) - 1
    assert not torch.equal(item["input"], item["target"])


def test_frame_tensor_round_trip():
    frame = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    back = ((frame_to_tensor(frame) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(back, frame)


def test_short_missing_and_repeated_videos_are_skipped_and_counted(cache):
    ann = [entry(v) for v in ("1", "2", "3", "4", "5", "6", "99", "1")]
    next1 = FramePairDataset(cache, ann, target_idx=21)
    assert next1.video_ids == ["1", "2", "3", "4", "6"]
    assert next1.skipped["too_short"] == ["5"]       # 21 frames: frame 21 does not exist
    assert next1.skipped["not_cached"] == ["99"]
    assert next1.skipped["duplicate"] == ["1"]
    next5 = FramePairDataset(cache, ann, target_idx=25)
    assert next5.video_ids == ["1", "3", "6"]
    assert sorted(next5.skipped["too_short"]) == ["2", "4", "5"]
    assert next5.summary()["skipped"] == {"duplicate": 1, "not_cached": 1, "too_short": 3,
                                          "no_progress_estimate": 0}
    next5[len(next5) - 1]  # every kept pair is readable


def test_progress_comes_from_the_cached_frame_count(cache):
    ds = FramePairDataset(cache, [entry("1"), entry("6")], target_idx=21, add_progress=True)
    assert ds.progress_from == "frame_count"
    assert ds.prompts == [build_prompt("moving something up", 50),   # 20 / 40
                          build_prompt("moving something up", 66)]   # 20 / 30 = 66.7
    assert ds[1]["prompt"].endswith("And 66% of the action has been completed.")


def test_progress_estimates_override_the_frame_count(cache):
    est = {"1": 73.4, "6": 12}
    ds = FramePairDataset(cache, [entry("1"), entry("6"), entry("3")], target_idx=21,
                          add_progress=True, progress_estimates=est)
    assert ds.progress_from == "estimates"
    assert ds.prompts == [build_prompt("moving something up", 73), build_prompt("moving something up", 12)]
    assert ds.skipped["no_progress_estimate"] == ["3"]


def test_no_progress_text_without_add_progress(cache):
    ds = FramePairDataset(cache, [entry("1")])
    assert "%" not in ds.prompts[0]
    with pytest.raises(ValueError, match="add_progress"):
        FramePairDataset(cache, [entry("1")], progress_estimates={"1": 50})


def test_annotations_file_errors_name_the_file(cache, tmp_path):
    good = tmp_path / "train_filtered.json"
    good.write_text(json.dumps([entry("1"), entry("6")]), encoding="utf-8")
    assert len(FramePairDataset(cache, good)) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "1"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json.*entry 0.*'label'"):
        FramePairDataset(cache, bad)
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        FramePairDataset(cache, broken)


def test_bad_indices_and_frames_are_rejected(cache):
    with pytest.raises(ValueError, match="input_idx < target_idx"):
        FramePairDataset(cache, [entry("1")], input_idx=21, target_idx=21)

    class WrongSize(FakeFrameCache):
        def frame(self, video_id, idx):
            return np.zeros((8, 8, 3), np.uint8)

    ds = FramePairDataset(WrongSize({"1": 30}), [entry("1")])
    with pytest.raises(ValueError, match=r"frame 20 of video 1 .*expected uint8 \(16, 16, 3\)"):
        ds[0]


def test_dataloader_batches_with_collate(cache):
    ds = FramePairDataset(cache, [entry(v) for v in ("1", "2", "3", "6")])
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_pairs)))
    assert batch["input"].shape == batch["target"].shape == (3, 3, 16, 16)
    assert batch["video_id"] == ["1", "2", "3"] and len(batch["prompt"]) == 3


def test_for_variant_uses_the_variant_frames_and_progress(cache):
    from pecn_ml.variants import VARIANTS

    ann = [entry(v) for v in ("1", "2", "3")]
    plain = FramePairDataset.for_variant(cache, ann, VARIANTS["next5"])
    assert (plain.input_idx, plain.target_idx, plain.video_ids) == (20, 25, ["1", "3"])
    assert "%" not in plain.prompts[0]
    prog = FramePairDataset.for_variant(cache, ann, VARIANTS["next1_progress"])
    assert prog.target_idx == 21 and prog.prompts[0].endswith("And 50% of the action has been completed.")
    est = FramePairDataset.for_variant(cache, ann, VARIANTS["next1_progress"], {"1": 10, "2": 20, "3": 30})
    assert est.prompts[2].endswith("And 30% of the action has been completed.")
    # estimates are ignored by a variant without progress
    assert FramePairDataset.for_variant(cache, ann, VARIANTS["next1"], {"1": 10}).prompts == [
        build_prompt("moving something up")] * 3


def test_shuffled_progress_gives_each_video_another_videos_percent():
    from pecn_ml.prompts import PROGRESS_SHUFFLE_SEED, derangement
    from pecn_ml.variants import VARIANTS

    lengths = {"1": 40, "3": 26, "6": 30, "7": 50, "8": 100, "9": 80}  # percents 50 76 66 40 20 25
    cache = FakeFrameCache(lengths)
    ann = [entry(v) for v in lengths]
    true = FramePairDataset.for_variant(cache, ann, VARIANTS["next1_progress"])
    shuffled = FramePairDataset.for_variant(cache, ann, VARIANTS["next1_shuffled"])
    assert shuffled.video_ids == true.video_ids and shuffled.shuffle_seed == PROGRESS_SHUFFLE_SEED
    assert true.percents == [50, 76, 66, 40, 20, 25] and shuffled.true_percents == true.percents
    perm = derangement(6, PROGRESS_SHUFFLE_SEED)
    assert shuffled.percents == [true.percents[j] for j in perm]
    assert sorted(shuffled.percents) == sorted(true.percents)        # same distribution
    assert all(s != t for s, t in zip(shuffled.percents, true.percents))  # no video keeps its own
    assert shuffled.prompts == [build_prompt("moving something up", p) for p in shuffled.percents]
    assert shuffled.summary()["progress_shuffle_seed"] == PROGRESS_SHUFFLE_SEED
    assert true.summary()["progress_shuffle_seed"] is None
    # PAC-Net estimates are shuffled the same way
    est = {"1": 11.5, "3": 22, "6": 33, "7": 44, "8": 55, "9": 66}
    by_est = FramePairDataset.for_variant(cache, ann, VARIANTS["next1_shuffled"], est)
    assert by_est.progress_from == "estimates" and by_est.percents == [list(est.values())[j] for j in perm]
    assert by_est.prompts[perm.index(0)].endswith("And 11% of the action has been completed.")
    with pytest.raises(ValueError, match="shuffle_seed"):
        FramePairDataset(cache, ann, shuffle_seed=1)  # no progress sentence to shuffle
