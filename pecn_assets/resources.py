"""Resources: where things live (settings) and which hub weights the real run starts from (models)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from pecn_ml.profiles import CLIP_NAME, PIX2PIX_BASE, RESNET_NAME, Profile, get_profile


class PecnSettings(dg.ConfigurableResource):
    """Profile (demo/full) and the folders for data, trained models and evaluation results."""

    profile: str = Field(default_factory=lambda: os.environ.get("PECN_PROFILE", "demo"),
                         description="`demo` or `full` (see pecn_ml/profiles.py)")
    data_dir: str = Field(default="", description="SSv2 folder; empty: PECN_DATA_DIR or the profile's")
    outputs_dir: str = Field(default_factory=lambda: os.environ.get("PECN_OUTPUTS_DIR", ""),
                             description="trained models; empty: PECN_OUTPUTS_DIR or the profile's")
    results_dir: str = Field(default_factory=lambda: os.environ.get("PECN_RESULTS_DIR", ""),
                             description="evaluation results; empty: PECN_RESULTS_DIR or the profile's")

    def get_profile(self) -> Profile:
        return get_profile(self.profile)

    def data_path(self) -> Path:
        return Path(self.data_dir or self.get_profile().resolve_data_dir()).absolute()

    def outputs_path(self) -> Path:
        return Path(self.outputs_dir or self.get_profile().outputs_dir).absolute()

    def results_path(self) -> Path:
        return Path(self.results_dir or self.get_profile().results_dir).absolute()

    def annotations_path(self) -> Path:
        return self.data_path() / "annotations"


class PretrainedModels(dg.ConfigurableResource):
    """The hub weights the real run starts from, by name and revision (branch, tag or commit).

    Used when the profile has no stand-ins (`full`): the `pretrained` assets resolve each name to
    one commit's files (downloading into the HF cache if needed) and record commit and sha. A
    local folder works too. The demo trains stand-ins instead and does not read these.
    """

    pix2pix: str = Field(default=PIX2PIX_BASE, description="InstructPix2Pix pipeline (hub id or folder)")
    pix2pix_revision: Optional[str] = Field(default=None, description="revision; empty: the default branch")
    resnet: str = Field(default=RESNET_NAME, description="PAC-Net frame encoder (hub id or folder)")
    resnet_revision: Optional[str] = Field(default=None, description="revision; empty: the default branch")
    clip_text: str = Field(default=CLIP_NAME, description="PAC-Net text encoder + tokenizer (hub id or folder)")
    clip_text_revision: Optional[str] = Field(default=None, description="revision; empty: the default branch")


def default_resources(profile: Profile | None = None) -> dict:
    """Resources for a profile: its settings and the hub names of the real run's weights."""
    profile = profile or get_profile()
    return {"settings": PecnSettings(profile=profile.name), "models": PretrainedModels()}
