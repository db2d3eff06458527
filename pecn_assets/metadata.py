"""Metadata helpers: Markdown tables and images (as data URIs) that the Dagster UI shows inline, and
the conversion of an artifact's plain metadata (pecn_ml.artifacts) into Dagster metadata values."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import dagster as dg
from PIL import Image

from pecn_ml.artifacts import Artifact, Table, Url


def table_md(rows: Sequence[dict]) -> str:
    """A Markdown table of dict rows (columns from the first row)."""
    if not rows:
        return "(empty)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _data_uri(path: Path, max_px: int) -> str:
    img = Image.open(path).convert("RGB")
    img.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_md(paths: Iterable[Path | str], caption: str = "", max_px: int = 768) -> str:
    """Markdown embedding small PNG copies of images (grids, curves) so the UI shows them."""
    parts = [f"![{Path(p).name}]({_data_uri(Path(p), max_px)})" for p in paths]
    text = " ".join(parts)
    return f"{text}\n\n{caption}" if caption else text


def dagster_value(value: Any) -> Any:
    """An artifact's plain metadata value as Dagster shows it: Url -> url, Table -> table, dict/list -> json;
    Paths, numbers, bools, strings and Dagster values as they are (Dagster makes a Path a path value)."""
    if isinstance(value, dg.MetadataValue):
        return value
    if isinstance(value, Url):
        return dg.MetadataValue.url(str(value))
    if isinstance(value, Table):
        schema = dg.TableSchema(columns=[dg.TableColumn(name, kind, description=text)
                                         for name, kind, text in value.columns])
        return dg.MetadataValue.table(records=[dg.TableRecord(dict(row)) for row in value], schema=schema)
    if isinstance(value, (dict, list, tuple)):
        return dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))
    return value


def materialized(artifact: Artifact, version: str, *, check_results: Sequence[dg.AssetCheckResult] = (),
                 **extra: Any) -> dg.MaterializeResult:
    """The result of an asset that produced `artifact`: the artifact itself (stored by the
    artifact I/O manager), its metadata plus `extra`, and `version` as the data version."""
    metadata = {k: dagster_value(v) for k, v in {**artifact.metadata(), **extra}.items()}
    return dg.MaterializeResult(value=artifact, metadata=metadata, data_version=dg.DataVersion(version),
                                check_results=list(check_results))
