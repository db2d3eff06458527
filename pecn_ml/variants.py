"""The four InstructPix2Pix variants of the seed's train_pipeline.sh and the two eval sets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str           # partition key of `ip2p_model`
    seed_name: str      # the seed's output folder name
    input_idx: int      # 0-based input frame (frame 20 = the 21st decoded frame)
    target_idx: int     # 0-based target frame
    add_progress: bool  # append "And N% of the action has been completed."


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("next1", "instruct_pix2pix_224", 20, 21, False),
        Variant("next1_progress", "instruct_pix2pix_224_progress", 20, 21, True),
        Variant("next5", "instruct_pix2pix_224_next5", 20, 25, False),
        Variant("next5_progress", "instruct_pix2pix_224_progress_next5", 20, 25, True),
    )
}

# eval set name -> filtered annotations file (under annotations/)
EVAL_SETS: dict[str, str] = {
    "basic": "val_filtered.json",
    "backforth": "val_filtered_backforth.json",
}
TRAIN_FILE = "train_filtered.json"


def progress_pairs() -> list[tuple[Variant, Variant]]:
    """(without progress, with progress) pairs compared by the t-tests, one per target frame."""
    return [(VARIANTS["next1"], VARIANTS["next1_progress"]),
            (VARIANTS["next5"], VARIANTS["next5_progress"])]
