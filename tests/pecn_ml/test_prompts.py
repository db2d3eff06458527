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
