"""Which exact weights were loaded: a hub name (or a local folder) pinned to one commit's files and
their sha256s, so that every later `from_pretrained` reads exactly those files (lineage)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pecn_ml.utils.files import folder_manifest, sha256_json

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Everything a diffusers/transformers folder needs except weights in formats we do not load.
_IGNORE = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.ckpt", "*.pb", "*fp16*",
           "*.md", ".gitattributes"]


@dataclass(frozen=True)
class ResolvedWeights:
    """Pretrained weights pinned to files on this machine."""

    name: str                          # what was asked for: hub repo id or folder
    path: Path                         # local folder to pass to from_pretrained
    revision: Optional[str]            # hub commit sha; None for a local folder
    weights_sha256: str                # sha over `files`
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


def weight_files(folder: str | os.PathLike, required: bool = False) -> dict[str, str]:
    """{relative path: sha256} of the folder's weight files ({} for a folder that is gone or empty;
    FileNotFoundError naming the folder instead where `required`)."""
    try:
        files = {rel: sha for rel, sha in folder_manifest(folder).items() if rel.endswith(WEIGHT_SUFFIXES)}
    except FileNotFoundError:
        files = {}
    if required and not files:
        raise FileNotFoundError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return files


def weights_sha256(folder: str | os.PathLike) -> str:
    """One sha256 for all weight files of a folder (their relative paths and shas)."""
    return sha256_json(weight_files(folder, required=True))


def weights_identity(name: str | os.PathLike) -> str:
    """`sha256:<weights_sha256>` of a local folder (moved or copied, still the same), a hub id as it is."""
    return f"sha256:{weights_sha256(name)}" if is_local(str(name)) else str(name)


def is_local(name: str) -> bool:
    """True for a folder path (absolute, ./relative or existing), False for a hub repo id."""
    path = Path(name)
    return path.is_absolute() or name.startswith(".") or path.exists()


def _missing_weights(folder: Path) -> list[str]:
    """Component folders (with a config.json) that hold no weight file."""
    out = []
    for cfg in folder.rglob("config.json"):
        sub = cfg.parent
        if sub.name != "scheduler" and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in sub.iterdir()):
            out.append(str(sub.relative_to(folder)) or ".")
    return out


def resolve_weights(name: str, revision: Optional[str] = None, *,
                    local_files_only: bool = False, cache_dir: Optional[str] = None
                    ) -> ResolvedWeights:
    """Pin `name` (hub repo id or local folder) to local files and hash them: one commit's snapshot
    from the hub or the HF cache, safetensors preferred (`.bin` where a component has none)."""
    if is_local(name):
        folder = Path(name).absolute()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: pretrained model folder does not exist")
        files = weight_files(folder, required=True)
        return ResolvedWeights(name, folder, None, sha256_json(files), files)

    from huggingface_hub import snapshot_download

    def download(ignore: list[str]) -> Path:
        try:
            return Path(snapshot_download(repo_id=name, revision=revision, ignore_patterns=ignore,
                                          local_files_only=local_files_only, cache_dir=cache_dir))
        except Exception as e:  # offline, unknown repo, no such revision
            where = f"{name}@{revision}" if revision else name
            raise FileNotFoundError(f"{where}: cannot resolve pretrained weights from the hub or "
                                    f"the HF cache ({type(e).__name__}: {e})") from e

    folder = download(_IGNORE + ["*.bin"])
    if _missing_weights(folder):
        folder = download(_IGNORE)
    missing = _missing_weights(folder)
    if missing:
        raise FileNotFoundError(f"{name}: no weights for {missing} in snapshot {folder}")
    files = weight_files(folder)
    return ResolvedWeights(name, folder, folder.name, sha256_json(files), files)
