"""Model cards: every model folder carries a `README.md` (`huggingface_hub.ModelCard`) whose YAML
header holds what a machine reads back (license, bases, data versions, config, seed, run id, losses;
docs/OPERATIONS.md). Written before the folder is renamed into place; no weight sha covers it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

CARD_NAME = "README.md"
# the real bases' licenses as their hub cards state them (`resolve_weights` does not download cards)
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
    """A `ModelCard`: the YAML header and a short Markdown body. `own_license`: the license of a
    model without a base (a stand-in); else the bases' decide."""
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
    """Save `card` as `folder/README.md`, atomically."""
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

