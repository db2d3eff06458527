"""The InstructPix2Pix instruction text: one function for training and evaluation alike.

The seed's prompts (PECN README, "Progress-Enhanced Training"):

- without progress: ``Generate a future frame of this action: moving something from left to right``
- with progress:    ``Generate a future frame of this action: moving something from left to right.
  And 60% of the action has been completed.``

and ``progress = int((input_frame_idx / total_frames) * 100)``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Mapping, Optional, Sequence, TypeVar

from pecn_ml.data.templates import label_key_of

PROMPT_PREFIX = "Generate a future frame of this action: "
PROGRESS_SUFFIX = ". And {p}% of the action has been completed."
T = TypeVar("T")


def progress_percent(input_idx: int, num_frames: int) -> int:
    """Percent of the video before frame `input_idx` (0-based), exactly as the seed computes it.

    `int(input_idx / num_frames * 100)` -- float division then truncation, so the prompts are
    byte-identical to the seed's (e.g. 20 of 35 frames -> 57).
    """
    if isinstance(input_idx, bool) or not isinstance(input_idx, int) or input_idx < 0:
        raise ValueError(f"progress_percent: input_idx must be an int >= 0, got {input_idx!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames <= 0:
        raise ValueError(f"progress_percent: num_frames must be an int > 0, got {num_frames!r}")
    if input_idx >= num_frames:
        raise ValueError(f"progress_percent: input frame {input_idx} is outside a video of "
                         f"{num_frames} frames")
    return int((input_idx / num_frames) * 100)


def build_prompt(label: str, progress_percent: Optional[Real] = None) -> str:
    """The instruction for `label`, with ``. And {p}% of the action has been completed.`` appended
    when `progress_percent` is given.

    A non-integer percent (PAC-Net's estimate) is truncated with `int()`, like the seed's formula.
    """
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"build_prompt: label must be a non-empty string, got {label!r}")
    text = PROMPT_PREFIX + label
    if progress_percent is None:
        return text
    if isinstance(progress_percent, bool) or not isinstance(progress_percent, Real):
        raise ValueError(f"build_prompt: progress_percent must be a number, got {progress_percent!r}")
    if not math.isfinite(progress_percent) or not 0 <= progress_percent <= 100:
        raise ValueError(f"build_prompt: progress_percent must be within [0, 100], "
                         f"got {progress_percent!r}")
    return text + PROGRESS_SUFFIX.format(p=int(progress_percent))


# --- the shuffled-progress control arm (variants next1_shuffled, next5_shuffled) -----------------
# The prompt keeps the progress sentence, but its number is another video's: the true percents of
# a list of videos (the training videos of a dataset, or the selected samples of an eval set) are
# reassigned by a seeded derangement, a permutation without fixed points, so no video keeps its
# own slot (it may still get an equal number, from a video of the same length). Same prompt
# form, same distribution of percentages, no information about the video itself.
PROGRESS_SHUFFLE_SEED = 16   # fixed for every training seed: the control is one fixed relabelling


def derangement(n: int, seed: int = PROGRESS_SHUFFLE_SEED) -> list[int]:
    """A permutation `perm` of range(n) with `perm[i] != i` for every i (n >= 2), uniform over the
    derangements of n (rejection sampling of `numpy.random.default_rng(seed).permutation(n)`;
    about e tries), the same for the same (n, seed). n = 1 has no derangement: [0] (the one
    video keeps its own percent); n = 0: []."""
    import numpy as np

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"derangement: n must be an int >= 0, got {n!r}")
    if n < 2:
        return list(range(n))
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return [int(j) for j in perm]


def shuffle_percents(percents: Sequence[T], seed: int = PROGRESS_SHUFFLE_SEED) -> list[T]:
    """`percents` (one per video, in a fixed order) reassigned by `derangement(len, seed)`: video i
    gets the percent of video perm[i]."""
    perm = derangement(len(percents), seed)
    return [percents[j] for j in perm]


# The action text in the prompt: the seed's examples use the class text ("moving something from
# left to right": the template without brackets, lowercased), not the filled-in label ("moving a
# cup from left to right"). `label` is kept as an option.
PROMPT_TEXTS = ("class", "label")


def action_text(entry: Mapping[str, Any], prompt_text: str = "class") -> str:
    """The action text of an annotation entry for the prompt: its class text or its label."""
    if prompt_text not in PROMPT_TEXTS:
        raise ValueError(f"prompt_text must be one of {PROMPT_TEXTS}, got {prompt_text!r}")
    if prompt_text == "label":
        return entry["label"]
    template = entry.get("template")
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"video {entry.get('id')!r}: no 'template' for a class-text prompt "
                         f"(prompt_text='class'); use filtered annotations or prompt_text='label'")
    return label_key_of(template).lower()
