"""The InstructPix2Pix instruction, as the seed writes it, for training and evaluation alike:
``Generate a future frame of this action: {action}[. And {p}% of the action has been completed.]``
with ``p = int((input_frame_idx / total_frames) * 100)``.
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
    """Percent of the video before frame `input_idx` (0-based), as the seed computes it (20 of 35 -> 57)."""
    if isinstance(input_idx, bool) or not isinstance(input_idx, int) or input_idx < 0:
        raise ValueError(f"progress_percent: input_idx must be an int >= 0, got {input_idx!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames <= 0:
        raise ValueError(f"progress_percent: num_frames must be an int > 0, got {num_frames!r}")
    if input_idx >= num_frames:
        raise ValueError(f"progress_percent: input frame {input_idx} is outside a video of "
                         f"{num_frames} frames")
    return int((input_idx / num_frames) * 100)


def build_prompt(label: str, progress_percent: Optional[Real] = None) -> str:
    """The instruction for `label`, with the progress sentence when `progress_percent` is given
    (a non-integer one, PAC-Net's estimate, is truncated like the seed's formula)."""
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


# The shuffled-progress control arm: the true percents of a list of videos reassigned by a seeded
# derangement (no video keeps its own slot): same prompt form and distribution, no information.
PROGRESS_SHUFFLE_SEED = 16   # fixed for every training seed: the control is one fixed relabelling


def derangement(n: int, seed: int = PROGRESS_SHUFFLE_SEED) -> list[int]:
    """A uniform permutation of range(n) with no fixed point (n >= 2; rejection sampling, about e
    tries), the same for the same (n, seed); [0] for n = 1, [] for n = 0."""
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


# the seed's prompts use the class text ("moving something from left to right"), not the label
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
