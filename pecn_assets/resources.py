"""Resources: where things live (settings) and where pretrained weights come from (models).

`HubModels` names the real pretrained weights (loaded with `from_pretrained`); `TinyLocalModels`
builds tiny random models locally and returns their folders, which load through the same path.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

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


class PretrainedModels(dg.ConfigurableResource, ABC):
    """Names or folders passed to `from_pretrained` for each pretrained component."""

    @abstractmethod
    def pix2pix(self) -> str: ...

    @abstractmethod
    def resnet(self) -> str: ...

    @abstractmethod
    def clip_text(self) -> str: ...


class HubModels(PretrainedModels):
    """The real pretrained weights on the Hugging Face hub (needs internet or a filled HF cache)."""

    pix2pix_name: str = PIX2PIX_BASE
    resnet_name: str = RESNET_NAME
    clip_name: str = CLIP_NAME

    def pix2pix(self) -> str:
        return self.pix2pix_name

    def resnet(self) -> str:
        return self.resnet_name

    def clip_text(self) -> str:
        return self.clip_name


class TinyLocalModels(PretrainedModels):
    """Tiny random models built once under `root` (demo and tests; no hub)."""

    root: str = Field(default_factory=lambda: os.environ.get("PECN_TINY_MODELS", ".tiny_models"),
                      description="folder the tiny models are built in (PECN_TINY_MODELS)")

    def _built(self):
        from pecn_ml.models.tiny import build_tiny_models

        return build_tiny_models(Path(self.root).absolute())

    def pix2pix(self) -> str:
        return str(self._built().pix2pix)

    def resnet(self) -> str:
        return str(self._built().resnet)

    def clip_text(self) -> str:
        return str(self._built().clip_text)


def default_resources(profile: Profile | None = None) -> dict:
    """Resources for a profile: tiny local models for the demo, hub names for the real run."""
    profile = profile or get_profile()
    models = TinyLocalModels() if profile.tiny_models else HubModels()
    return {"settings": PecnSettings(profile=profile.name), "models": models}
