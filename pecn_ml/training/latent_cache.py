"""Encode frames and prompts once, reuse them across epochs and variants (exact: the VAE and text
encoder are frozen, frames are not augmented). Frames are cached as VAE posterior parameters
(mean, logvar), so a training step draws a fresh posterior sample as re-encoding would; prompts as
the text encoder's hidden states keyed by their token ids. Safetensors shards under `root`, keyed
by the encoders' weights, dtype and device kind (and the frame cache's version); a later run
encodes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from pecn_ml.data.pairs import frame_to_tensor
from pecn_ml.models.pix2pix import encode_token_ids, tokenize_prompts
from pecn_ml.utils.files import atomic_path
from pecn_ml.utils.progress import LogFn, ProgressMeter


def module_sha256(module: torch.nn.Module) -> str:
    """Hex sha256 of a module's state dict (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _shard_folder(kind: str, module: Any) -> str:
    """`{kind}-{weights sha}-{dtype}-{device kind}`: the shards of one encoder as it is now."""
    dtype = str(module.dtype).replace("torch.", "")
    return f"{kind}-{module_sha256(module)[:16]}-{dtype}-{torch.device(module.device).type}"


@torch.no_grad()
def encode_pixels(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, R, R) in [-1, 1] -> VAE posterior (mean, logvar), each (B, 4, R/f, R/f), on the VAE's
    device and dtype (logvar clamped to [-30, 20], as diffusers does)."""
    assert pixels.ndim == 4 and pixels.shape[1] == 3, f"expected (B, 3, R, R), got {tuple(pixels.shape)}"
    dist = vae.encode(pixels.to(vae.device, dtype=vae.dtype)).latent_dist
    return dist.mean, dist.logvar


def sample_latents(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """A posterior sample ``mean + exp(logvar / 2) * eps`` (diffusers' `latent_dist.sample()`)."""
    assert mean.shape == logvar.shape == eps.shape, "mean, logvar and eps must have one shape"
    return mean + torch.exp(0.5 * logvar) * eps


@dataclass
class PairLatents:
    """Encoded pairs of a dataset, on the CPU, in the dataset's order."""

    target_mean: torch.Tensor    # (N, 4, h, w) posterior mean of the target frame
    target_logvar: torch.Tensor  # (N, 4, h, w)
    image_latents: torch.Tensor  # (N, 4, h, w) posterior mode (= mean) of the input frame
    prompt_embeds: torch.Tensor  # (P, L, D) unique prompts
    prompt_index: torch.Tensor   # (N,) long, row of prompt_embeds for each pair

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.target_mean, self.target_logvar, self.image_latents, self.prompt_embeds))


class LatentStore:
    """The shard folder of one VAE + text encoder (at their current dtype and device kind)."""

    def __init__(self, root: str | Path, vae: Any, tokenizer: Any, text_encoder: Any, *,
                 batch_size: int = 16, log: Optional[LogFn] = None):
        self.root = Path(root)
        self.vae, self.tokenizer, self.text_encoder = vae, tokenizer, text_encoder
        self.batch_size = batch_size
        self.log = log
        self.encoded = {"frames": 0, "prompts": 0}   # encoded by this store (cache misses)
        self.loaded = {"frames": 0, "prompts": 0}    # taken from shards (cache hits)
        self.vae_dir = self.root / _shard_folder("vae", vae)
        self.text_dir = self.root / _shard_folder("text", text_encoder)

    # --- shards -------------------------------------------------------------------------------
    @staticmethod
    def _read_shards(paths: Sequence[Path], wanted: set[str]) -> dict[str, dict[str, torch.Tensor]]:
        from safetensors import safe_open

        found: dict[str, dict[str, torch.Tensor]] = {}
        for path in paths:
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = json.loads(f.metadata()["keys"])
                    rows = [i for i, k in enumerate(keys) if k in wanted and k not in found]
                    if not rows:
                        continue
                    tensors = {name: f.get_tensor(name) for name in f.keys()}
            except Exception as e:  # a damaged shard is named, never trusted
                raise ValueError(f"{path}: unreadable latent-cache shard ({e}); delete it") from e
            for i in rows:
                found[keys[i]] = {name: t[i] for name, t in tensors.items()}
        return found

    @staticmethod
    def _write_shard(folder: Path, prefix: str, keys: list[str],
                     tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        path = folder / f"{prefix}-{_sha(json.dumps(keys))[:16]}.safetensors"
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"keys": json.dumps(keys)})
        return path

    def _load_or_encode(self, kind: str, folder: Path, prefix: str, keys: Sequence[str], batch: int,
                        encode: Callable[[list[str]], dict[str, torch.Tensor]], what: str) -> dict[str, dict]:
        """{key: {name: tensor}} for `keys`: from the shards `folder/{prefix}-*`, the missing ones
        encoded `batch` at a time (`encode(keys) -> {name: (b, ...) tensor}`) into one new shard."""
        found = self._read_shards(sorted(folder.glob(f"{prefix}-*.safetensors")), set(keys))
        self.loaded[kind] += len(found)
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            meter = ProgressMeter(what, len(missing), self.log, unit=kind)
            parts = []
            for s in range(0, len(missing), batch):
                parts.append({n: t.cpu() for n, t in encode(missing[s: s + batch]).items()})
                meter.update(len(parts[-1][next(iter(parts[-1]))]))
            tensors = {n: torch.cat([part[n] for part in parts]) for n in parts[0]}
            self._write_shard(folder, prefix, missing, tensors)
            found.update({k: {n: t[i] for n, t in tensors.items()} for i, k in enumerate(missing)})
            self.encoded[kind] += len(missing)
        return found

    def frame_latents(self, read_frame: Callable[[str, int], Any], source: str,
                      video_ids: Sequence[str], frame_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar), each (N, 4, h, w) on the CPU, of frame `frame_idx` of each video
        (`read_frame(video_id, idx) -> (R, R, 3) uint8`; `source`: `frame_source_key`)."""
        assert len(video_ids) > 0, "frame_latents: no videos"

        def encode(chunk: list[str]) -> dict[str, torch.Tensor]:
            pixels = torch.stack([frame_to_tensor(read_frame(v, frame_idx)) for v in chunk])
            mean, logvar = encode_pixels(self.vae, pixels)  # (b, 4, h, w) each
            return {"mean": mean, "logvar": logvar}

        found = self._load_or_encode("frames", self.vae_dir / source, f"f{frame_idx:03d}", video_ids,
                                     self.batch_size, encode, f"encode frame {frame_idx} latents")
        mean, logvar = (torch.stack([found[v][name] for v in video_ids]) for name in ("mean", "logvar"))
        return mean, logvar   # (N, 4, h, w) each

    def prompt_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique-prompt embeddings (P, L, D) on the CPU and the (N,) index of each prompt."""
        assert len(prompts) > 0, "prompt_embeddings: no prompts"
        unique = list(dict.fromkeys(prompts))
        ids = torch.cat([tokenize_prompts(self.tokenizer, unique[s: s + 256])
                         for s in range(0, len(unique), 256)])            # (P, L)
        keys = [hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in ids]
        row_of = {k: i for i, k in reversed(list(enumerate(keys)))}        # first row of each key

        def encode(chunk: list[str]) -> dict[str, torch.Tensor]:
            return {"embeds": encode_token_ids(self.text_encoder, ids[[row_of[k] for k in chunk]])}

        found = self._load_or_encode("prompts", self.text_dir, "p", keys, self.batch_size * 4, encode,
                                     "encode prompts")
        table = torch.stack([found[k]["embeds"] for k in keys])             # (P, L, D)
        pos = {p: i for i, p in enumerate(unique)}
        index = torch.tensor([pos[p] for p in prompts], dtype=torch.long)   # (N,)
        return table, index


def frame_source_key(cache: Any) -> str:
    """Folder name for a frame cache's data: its version (hashed) and resolution."""
    return f"v{_sha(str(cache.version))[:12]}-r{int(cache.resolution)}"


def encode_dataset(store: LatentStore, dataset: Any) -> PairLatents:
    """Encode (or load) every pair of a `FramePairDataset`: target and input frame latents, prompts."""
    assert len(dataset) > 0, "encode_dataset: empty dataset"
    ids = list(dataset.video_ids)
    source = frame_source_key(dataset.cache)
    t_mean, t_logvar = store.frame_latents(dataset.frame, source, ids, dataset.target_idx)
    i_mean, _ = store.frame_latents(dataset.frame, source, ids, dataset.input_idx)
    embeds, index = store.prompt_embeddings(list(dataset.prompts))
    return PairLatents(t_mean, t_logvar, i_mean, embeds, index)
