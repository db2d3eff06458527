"""The one I/O manager: each artifact (pecn_ml.artifacts) is a small JSON file
`{root}/{asset}/{partition}.json`, loaded back verified (its files' sha256) and refused when its
blocking check failed, except by the checks themselves (op tag `pecn/check`). An input annotated
`dict[str, X]` gets {partition: artifact}; an `Optional[X]` one gets None when never materialised."""

from __future__ import annotations

import collections.abc
import json
import typing
import warnings
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import dagster as dg
from pydantic import Field

from pecn_ml.artifacts import Artifact, ArtifactChanged, PartialShaWarning, artifact_from_json
from pecn_ml.utils.files import write_json_atomic

CHECK_OP_TAG = "pecn/check"
UNPARTITIONED = "__all__"


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Stores and loads the assets' artifacts (small JSON handles)."""

    root: Optional[str] = Field(default=None, description="folder of the JSON handles; empty: "
                                "$DAGSTER_HOME/storage/pecn_artifacts")

    def _file(self, context: dg.OutputContext | dg.InputContext, partition: Optional[str]) -> Path:
        base = Path(self.root or Path(context.step_context.instance.storage_directory()) / "pecn_artifacts")
        return base / "/".join(context.asset_key.path) / f"{quote(partition or UNPARTITIONED, safe='')}.json"

    def handle_output(self, context: dg.OutputContext, obj: Artifact) -> None:
        if not isinstance(obj, Artifact):
            raise TypeError(f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, "
                            "not a pecn_ml.artifacts.Artifact")
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._file(context, partition)
        write_json_atomic(path, obj.to_json())
        context.add_output_metadata({"artifact": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        annotation = context.dagster_type.typing_type
        optional = type(None) in typing.get_args(annotation)
        partitions = context.asset_partition_keys if context.has_asset_partitions else [None]
        loaded = {p: self._load(context, p, optional) for p in partitions}
        if typing.get_origin(annotation) in (dict, collections.abc.Mapping):
            return {str(p): a for p, a in loaded.items()}
        if len(loaded) != 1:
            raise dg.Failure(f"input {context.name!r} maps to {len(loaded)} partitions of "
                             f"{context.asset_key.to_user_string()}; annotate it dict[str, ...]")
        return next(iter(loaded.values()))

    def _load(self, context: dg.InputContext, partition: Optional[str], optional: bool) -> Any:
        name = context.asset_key.to_user_string() + (f" partition {partition}" if partition else "")
        path = self._file(context, partition)
        if not path.is_file():
            if optional:
                return None
            raise dg.Failure(f"{name} has never been materialised (no {path}): materialise it first")
        artifact = artifact_from_json(json.loads(path.read_text(encoding="utf-8")))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", PartialShaWarning)
                artifact.verify()
            for w in caught:
                if issubclass(w.category, PartialShaWarning):
                    context.log.warning(f"{name}: {w.message}")
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except ArtifactChanged as e:
            raise dg.Failure(f"{name}: {e}; re-materialise {context.asset_key.to_user_string()}",
                             allow_retries=False) from None
        problems = artifact.problems()
        if problems and CHECK_OP_TAG not in (context.op_def.tags or {}):
            raise dg.Failure(f"{name} failed its blocking check ({'; '.join(problems)}): nothing downstream "
                             "runs on it; fix it and re-materialise", allow_retries=False)
        return artifact
