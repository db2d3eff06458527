"""The InstructPix2Pix variants: the seed's four, two control arms (`*_shuffled`: another video's
percent, `pecn_ml.prompts.shuffle_percents`), and the two eval sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pecn_ml.prompts import PROGRESS_SHUFFLE_SEED, PROGRESS_SUFFIX, PROMPT_PREFIX


@dataclass(frozen=True)
class Variant:
    name: str           # partition key of `ip2p_model`
    seed_name: str      # the seed's output folder name
    input_idx: int      # 0-based input frame (frame 20 = the 21st decoded frame)
    target_idx: int     # 0-based target frame
    add_progress: bool  # append "And N% of the action has been completed."
    shuffled_progress: bool = False  # ... with N of another video (control arm; needs add_progress)

    def __post_init__(self):
        if self.shuffled_progress and not self.add_progress:
            raise ValueError(f"variant {self.name}: shuffled_progress needs add_progress")

    def prompt_form(self, prompt_text: str = "class") -> str:
        """The variant's prompt as a template, e.g. "Generate a future frame of this action: {class
        text}. And {percent}% of the action has been completed." (`prompt_text`: "class" or "label")."""
        form = PROMPT_PREFIX + ("{class text}" if prompt_text == "class" else "{filled label}")
        if self.add_progress:
            form += PROGRESS_SUFFIX.format(p="{another video's percent}" if self.shuffled_progress else "{percent}")
        return form

    @property
    def shuffle_seed(self) -> Optional[int]:
        """The seed of the percent derangement for a shuffled arm; None otherwise."""
        return PROGRESS_SHUFFLE_SEED if self.shuffled_progress else None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("next1", "instruct_pix2pix_224", 20, 21, False),
        Variant("next1_progress", "instruct_pix2pix_224_progress", 20, 21, True),
        Variant("next5", "instruct_pix2pix_224_next5", 20, 25, False),
        Variant("next5_progress", "instruct_pix2pix_224_progress_next5", 20, 25, True),
        Variant("next1_shuffled", "instruct_pix2pix_224_shuffled", 20, 21, True, shuffled_progress=True),
        Variant("next5_shuffled", "instruct_pix2pix_224_shuffled_next5", 20, 25, True, shuffled_progress=True),
    )
}

# eval set name -> filtered annotations file (under annotations/)
EVAL_SETS: dict[str, str] = {
    "basic": "val_filtered.json",
    "backforth": "val_filtered_backforth.json",
}
TRAIN_FILE = "train_filtered.json"


# name of a comparison -> (arm A, arm B) by suffix; the t-tests test B - A
COMPARISONS: dict[str, tuple[str, str]] = {
    "progress - plain": ("", "_progress"),          # the seed's question: does the prompt help?
    "progress - shuffled": ("_shuffled", "_progress"),  # does the percentage's information help?
    "shuffled - plain": ("", "_shuffled"),          # does the sentence's form help?
}


def comparison_pairs() -> list[tuple[str, Variant, Variant]]:
    """(comparison, arm A, arm B) compared by the t-tests (difference B - A), per target frame
    (next1, next5) and comparison in `COMPARISONS` order."""
    return [(name, VARIANTS[target + a], VARIANTS[target + b])
            for target in ("next1", "next5") for name, (a, b) in COMPARISONS.items()]
