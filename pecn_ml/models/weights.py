"""Which exact weights were loaded: resolve a hub name (or a local folder) to files and shas.

`from_pretrained("timbrooks/instruct-pix2pix")` loads whatever the hub's `main` points at today.
For lineage the platform resolves a name once, to a local snapshot folder of one commit, and
passes that folder on: every later `from_pretrained` reads exactly those files, and the commit
and the sha256 of every weight file are recorded.

- `resolve_weights(name, revision)`: a hub repository -> `huggingface_hub.snapshot_download`
  (safetensors preferred; `.bin` only for a folder without safetensors), which fills the usual HF
  cache and works offline (`local_files_only=True` or HF_HUB_OFFLINE=1) once it is there. A
  local folder is used as it is. Either way the weight files are hashed.
- `weights_sha256(folder)`: one sha over the weight files' shas (relative path -> sha256); the
  data version of a base-weights asset is the sha of the folder's whole manifest instead
  (`pecn_ml.utils.files.folder_manifest`: configs, tokenizer and scheduler files too).
- `weights_identity(name)`: what a training checkpoint's fingerprint records of its pretrained
  weights: that sha for a local folder (never the folder's path), the hub id otherwise.
"""

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

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "revision": self.revision,
                "weights_sha256": self.weights_sha256, "files": dict(self.files)}


def weight_files(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every weight file of the folder's manifest (sorted; {} for a
    folder that is gone or empty)."""
    try:
        files = folder_manifest(folder)
    except FileNotFoundError:
        return {}
    return {rel: sha for rel, sha in files.items() if rel.endswith(WEIGHT_SUFFIXES)}


def weights_sha256(folder: str | os.PathLike) -> str:
    """One sha256 for all weight files of a folder (their relative paths and shas)."""
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return sha256_json(files)


def weights_identity(name: str | os.PathLike) -> str:
    """`sha256:<weights_sha256>` of a local folder, so that the same weights in a moved or copied
    folder are the same weights to a resume check; a hub repository id as it is."""
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
    """Pin `name` (hub repo id or local folder) to local files and hash them.

    Hub: downloads (or finds in the HF cache) one commit's snapshot with safetensors weights,
    falling back to `.bin` for a component that has no safetensors. Raises FileNotFoundError
    naming the repository when it is neither cached nor reachable, or holds no weights.
    """
    if is_local(name):
        folder = Path(name).absolute()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: pretrained model folder does not exist")
        files = weight_files(folder)
        if not files:
            raise FileNotFoundError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
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
