"""Metadata helpers: Markdown tables and images (as data URIs) that the Dagster UI shows inline."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image


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
