"""Model cards: every model folder carries its story in a `README.md` (`huggingface_hub.ModelCard`).

A card's YAML header holds the facts a machine reads back (`ModelCard.load(folder / "README.md")`):

| field            | what                                                                          |
|------------------|-------------------------------------------------------------------------------|
| `license`        | the base weights' license (`other` + `license_name` where bases differ or for a stand-in) |
| `base_model`     | the hub ids the weights start from (absent for a stand-in, trained from scratch) |
| `base_weights`   | per base: role, name, revision (hub commit or stand-in key), sha256, license   |
| `data_versions`  | the data the model was trained on: annotations, frame cache, ... (versions)    |
| `training_config`| the trainer's config as used                                                  |
| `seed`           | the training seed                                                             |
| `variant`, `prompt_form` | InstructPix2Pix: which variant and how its prompts are written (PAC-Net: head) |
| `dagster_run_id` | the Dagster run that trained it ("" when not trained by a run, e.g. a test)    |
| `loss_summary`   | first / final loss, steps; PAC-Net: selection MAE, mean-predictor MAE, best epoch |

The trainers write the card into the folder's temp directory before it is renamed into place, so a
folder never exists without its card; `from_pretrained` ignores README.md, and no weight hash
(`weights_sha256`, `checkpoint_sha256`) covers it. The facts only the caller knows (run id, data
versions, base revisions and licenses) come in as a `CardContext`; pecn_ml has no Dagster imports.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

CARD_NAME = "README.md"
# Licenses of the real run's base weights, as their hub cards state them (used when a base folder
# carries no card of its own: `resolve_weights` does not download README.md). Unknown ids: "unknown".
HUB_LICENSES = {"timbrooks/instruct-pix2pix": "mit", "microsoft/resnet-50": "apache-2.0"}
STANDIN_LICENSE = "other"
STANDIN_LICENSE_NAME = "pecn-demo-stand-in"   # random init + synthetic data, built by this project


@dataclass(frozen=True)
class BaseWeights:
    """One set of pretrained weights a model starts from."""

    role: str                   # pix2pix_base, resnet_base, clip_text_base
    name: str                   # hub id, or "stand-in for <hub id>", or a folder
    revision: str = ""          # hub commit; a stand-in's content key; "" when unknown
    sha256: str = ""            # weights_sha256 of the folder (or the trainer's identity of it)
    license: str = "unknown"


@dataclass(frozen=True)
class CardContext:
    """What the caller of a trainer knows about the model and the trainer does not."""

    run_id: str = ""                                          # the Dagster run
    data_versions: Mapping[str, str] = field(default_factory=dict)
    bases: Sequence[BaseWeights] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)    # more YAML fields (variant, prompt_form, ...)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "data_versions": dict(self.data_versions),
                "bases": [asdict(b) for b in self.bases], "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "CardContext":
        data = dict(data or {})
        return cls(run_id=str(data.get("run_id", "")), data_versions=dict(data.get("data_versions", {})),
                   bases=tuple(BaseWeights(**b) for b in data.get("bases", ())),
                   extra=dict(data.get("extra", {})))


def base_license(folder: str | os.PathLike | None, name: str) -> str:
    """The license of base weights: the folder's own card's, else `HUB_LICENSES[name]`, else "unknown"."""
    card = Path(folder) / CARD_NAME if folder else None
    if card is not None and card.is_file():
        from huggingface_hub import ModelCard

        try:
            data = ModelCard.load(card, ignore_metadata_errors=True).data
        except Exception:          # a malformed card names no license
            data = None
        found = data and (data.license_name if data.license == "other" and data.license_name else data.license)
        if found:
            return str(found)
    return HUB_LICENSES.get(name, "unknown")


def _license_fields(bases: Sequence[BaseWeights], own: Optional[str]) -> dict[str, Any]:
    if own is not None:
        return {"license": STANDIN_LICENSE, "license_name": own} if own == STANDIN_LICENSE_NAME else {"license": own}
    licenses = sorted({b.license for b in bases})
    if len(licenses) == 1 and licenses[0] not in ("unknown", STANDIN_LICENSE, STANDIN_LICENSE_NAME):
        return {"license": licenses[0]}
    return {"license": "other", "license_name": " + ".join(f"{b.role}: {b.license}" for b in bases) or "unknown"}


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def build_card(*, title: str, kind: str, description: str, context: CardContext,
               training_config: Mapping[str, Any], seed: Any, loss_summary: Mapping[str, Any],
               library_name: str, extra: Optional[Mapping[str, Any]] = None,
               own_license: Optional[str] = None):
    """A `ModelCard`: YAML header with the fields of the module table, and a short Markdown body.
    `own_license`: the model's license where it has no base (a stand-in); else the bases' decide."""
    from huggingface_hub import ModelCard, ModelCardData

    fields = {**dict(context.extra), **dict(extra or {})}
    hub_ids = [b.name for b in context.bases if "/" in b.name and not os.path.isabs(b.name)
               and not b.name.startswith("stand-in")]
    data = ModelCardData(
        model_name=title, library_name=library_name, tags=["pecn", kind],
        base_model=(hub_ids[0] if len(hub_ids) == 1 else hub_ids) or None,
        **_license_fields(context.bases, own_license),
        pecn_kind=kind, dagster_run_id=context.run_id, seed=seed,
        base_weights=[asdict(b) for b in context.bases], data_versions=dict(context.data_versions),
        training_config=json.loads(json.dumps(dict(training_config), default=str)),
        loss_summary=json.loads(json.dumps(dict(loss_summary), default=str)), **fields)
    rows = [("kind", kind), ("Dagster run", context.run_id or "none (not trained by a Dagster run)"),
            ("seed", seed),
            *((f"base `{b.role}`", f"{b.name} @ {b.revision or '?'} (sha256 {b.sha256 or '?'}; license {b.license})")
              for b in context.bases),
            *((f"data `{k}`", v) for k, v in context.data_versions.items()),
            *((k, v) for k, v in fields.items()),
            ("loss summary", dict(loss_summary))]
    body = "\n".join([f"# {title}", "", description, "", "| field | value |", "|---|---|",
                      *(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows), "",
                      "Training config:", "", "```json",
                      json.dumps(dict(training_config), indent=1, sort_keys=True, default=str), "```", ""])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_card(folder: str | os.PathLike, card: Any) -> Path:
    """Save `card` as `folder/README.md` (into a folder that is not yet renamed into place, or
    atomically as one file into a finished one)."""
    from pecn_ml.utils.files import atomic_path

    path = Path(folder) / CARD_NAME
    with atomic_path(path) as tmp:
        card.save(tmp)
    return path


def read_card(folder: str | os.PathLike):
    """The `ModelCard` of a model folder (FileNotFoundError naming it when there is none)."""
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model folder has no card")
    return ModelCard.load(path)


__all__ = ["BaseWeights", "CardContext", "CARD_NAME", "base_license", "build_card", "write_card", "read_card"]
