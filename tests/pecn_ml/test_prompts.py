"""The InstructPix2Pix prompt: exact strings of the seed README, and the seed's progress formula."""

import pytest

from pecn_ml.prompts import build_prompt, progress_percent


def test_prompt_without_progress_is_the_seed_text():
    assert (build_prompt("moving something from left to right")
            == "Generate a future frame of this action: moving something from left to right")


def test_prompt_with_progress_is_the_seed_text():
    assert (build_prompt("moving something from left to right", 60)
            == "Generate a future frame of this action: moving something from left to right. "
               "And 60% of the action has been completed.")


def test_prompt_keeps_label_bytes_and_zero_progress():
    assert build_prompt("putting taschentücher onto a box", 0).endswith(
        "putting taschentücher onto a box. And 0% of the action has been completed.")


def test_estimated_percent_is_truncated_like_the_seed_formula():
    assert build_prompt("x", 61.9) == build_prompt("x", 61)
    assert build_prompt("x", 100.0).endswith("And 100% of the action has been completed.")


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), "60", True])
def test_bad_progress_is_rejected(bad):
    with pytest.raises(ValueError, match="progress_percent"):
        build_prompt("moving something up", bad)


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_bad_label_is_rejected(bad):
    with pytest.raises(ValueError, match="label"):
        build_prompt(bad)


@pytest.mark.parametrize("idx, n, expected", [
    (20, 35, 57),    # 57.14 truncated
    (20, 25, 80),
    (20, 21, 95),    # 95.2
    (29, 100, 28),   # float: 0.29 * 100 = 28.999..., int() -> 28, exactly as the seed
    (0, 40, 0),
])
def test_progress_percent_is_the_seed_formula(idx, n, expected):
    assert progress_percent(idx, n) == expected == int((idx / n) * 100)


@pytest.mark.parametrize("idx, n", [(20, 20), (25, 20), (-1, 30), (20, 0)])
def test_progress_percent_rejects_frames_outside_the_video(idx, n):
    with pytest.raises(ValueError):
        progress_percent(idx, n)


def test_derangement_has_no_fixed_points_and_is_fixed_by_its_seed():
    from pecn_ml.prompts import PROGRESS_SHUFFLE_SEED, derangement

    for n in range(2, 40):
        perm = derangement(n)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm)), n
        assert derangement(n, PROGRESS_SHUFFLE_SEED) == perm  # the default seed, reproducible
    assert derangement(2) == [1, 0]
    assert len({tuple(derangement(8, seed)) for seed in range(20)}) > 10  # the seed matters
    assert derangement(1) == [0] and derangement(0) == []  # one video has no other to take from
    with pytest.raises(ValueError, match="n must be"):
        derangement(-1)


def test_shuffle_percents_keeps_the_distribution_and_moves_every_value():
    from pecn_ml.prompts import derangement, shuffle_percents

    true = [10, 25, 40, 55, 70, 85]
    shuffled = shuffle_percents(true, seed=3)
    assert sorted(shuffled) == true and all(s != t for s, t in zip(shuffled, true))
    assert shuffled == [true[j] for j in derangement(6, 3)]
    assert shuffle_percents(true, seed=3) == shuffled
