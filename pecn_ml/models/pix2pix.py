"""InstructPix2Pix model construction: load the parts, widen `conv_in`, build the pipeline.

Checkpoint layouts (`pecn_ml.sampling.load_pipeline` loads both): full, a `save_pretrained`
pipeline folder (a hub base is saved so); light (`BASE_REF`, no `model_index.json`): the trained
`unet/` and `base.json`, a reference to a local base's frozen parts (path, relative path and the
sha256 of `frozen_manifest`), verified by `resolve_base`.
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from torch import nn

from pecn_ml.models.weights import is_local
from pecn_ml.utils.files import ManifestMismatch, check_manifest, folder_manifest, manifest_sha256, write_json_atomic

DEFAULT_PRETRAINED = "timbrooks/instruct-pix2pix"
BASE_REF = "base.json"            # a light checkpoint's reference to the frozen parts of its base
BASE_REF_FORMAT = "pecn-pix2pix-base-ref-v1"
TRAINED_PART = "unet"             # the one component fine-tuning changes (and a light checkpoint holds)
LATENT_TARGET_FILE = "latent_target.json"   # at a base's root: what its UNet's latents are
LATENT_TARGET_FORMAT = "pecn-latent-target-v1"
IP2P_IN_CHANNELS = 8   # 4 noisy latent channels + 4 input-image latent channels
SD_IN_CHANNELS = 4
# what a UNet's clean latents are: "frame", the target frame's (InstructPix2Pix's), or "change", the
# target frame's minus the input frame's (scaled): predicting no change reproduces the input
LatentTarget = Literal["frame", "change"]
LATENT_TARGETS: tuple[str, ...] = typing.get_args(LatentTarget)


def widen_conv_in(unet: Any, in_channels: int = IP2P_IN_CHANNELS) -> Any:
    """Widen `unet.conv_in` to `in_channels` in place (new kernel channels zero, the pretrained
    bias kept, unlike the diffusers example), so for zero extra input the output is unchanged."""
    old: nn.Conv2d = unet.conv_in
    if old.in_channels >= in_channels:
        raise ValueError(f"widen_conv_in: conv_in already has {old.in_channels} input channels "
                         f"(asked for {in_channels})")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, bias=old.bias is not None,
                    padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()                                # (C_out, in_channels, k, k)
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


@dataclass
class Pix2PixComponents:
    """The parts the training loop needs, loaded from one pretrained folder or hub name."""

    tokenizer: Any
    text_encoder: Any      # CLIPTextModel (frozen)
    vae: Any               # AutoencoderKL (frozen)
    unet: Any              # UNet2DConditionModel with 8 input channels (trained)
    noise_scheduler: Any   # DDPMScheduler from the folder's scheduler config
    widened: bool          # True when the UNet came from a 4-channel SD checkpoint
    latent_target: str = "frame"   # what the UNet's clean latents are (`latent_target`)


def _check_local(pretrained: str) -> None:
    path = Path(pretrained)
    if is_local(pretrained):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: pretrained model folder does not exist")
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (path / sub).is_dir():
                raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no {sub}/)")


def load_pix2pix_components(pretrained: str | Path = DEFAULT_PRETRAINED) -> Pix2PixComponents:
    """Tokenizer, text encoder, VAE (both frozen), UNet (a 4-channel SD one widened to 8) and a
    DDPM noise scheduler, like the diffusers example; device and dtype are the caller's."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    name = str(pretrained)
    _check_local(name)
    noise_scheduler = DDPMScheduler.from_pretrained(name, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(name, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(name, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet")
    in_ch = unet.config.in_channels
    if in_ch == SD_IN_CHANNELS:
        widen_conv_in(unet, IP2P_IN_CHANNELS)
    elif in_ch != IP2P_IN_CHANNELS:
        raise ValueError(f"{name}: UNet has {in_ch} input channels; expected 4 (Stable Diffusion) "
                         f"or 8 (InstructPix2Pix)")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    return Pix2PixComponents(tokenizer, text_encoder, vae, unet, noise_scheduler,
                             widened=in_ch == SD_IN_CHANNELS, latent_target=latent_target(name))


def write_latent_target(folder: str | os.PathLike, value: str) -> None:
    """Record at a pipeline folder's root what its UNet's clean latents are (`latent_target`)."""
    if value not in LATENT_TARGETS:
        raise ValueError(f"latent target must be one of {LATENT_TARGETS}, got {value!r}")
    write_json_atomic(Path(folder) / LATENT_TARGET_FILE, {"format": LATENT_TARGET_FORMAT, "latent_target": value})


def latent_target(model: str | os.PathLike) -> str:
    """What a model's UNet's clean latents are (`LATENT_TARGETS`): "frame" for a hub model or a
    folder without `LATENT_TARGET_FILE` (a light checkpoint's is its base's); ValueError naming an
    unreadable record."""
    folder = Path(model)
    if not folder.is_dir():
        return "frame"                                    # a hub name
    if (folder / BASE_REF).is_file() and not (folder / "model_index.json").is_file():
        folder = resolve_base(folder)
    path = folder / LATENT_TARGET_FILE
    if not path.is_file():
        return "frame"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable latent target record ({e})") from e
    value = record.get("latent_target") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != LATENT_TARGET_FORMAT or value not in LATENT_TARGETS:
        raise ValueError(f"{path}: not a {LATENT_TARGET_FORMAT} record naming one of {LATENT_TARGETS}")
    return value


@torch.no_grad()
def run_pipeline(pipe: Any, prompts: Sequence[str], images: Sequence[Any], *, latent_target: str = "frame",
                 change_threshold: Optional[float] = None, change_dilate: int = 0, **kwargs: Any) -> Any:
    """`pipe(prompts, image=images, output_type="np", **kwargs).images`, (B, H, W, 3) in [0, 1], for
    either latent target: with "change" the input's latents (posterior mode) are added before
    decoding. `change_threshold` ("change" only) keeps the prediction where the predicted change's
    latent norm reaches it (grown by `change_dilate` px) and the input's VAE round trip elsewhere,
    since a decoder with attention or GroupNorm spreads a local edit over the whole image."""
    if latent_target == "frame":
        return pipe(list(prompts), image=list(images), output_type="np", **kwargs).images
    if latent_target != "change":
        raise ValueError(f"unknown latent target {latent_target!r}")
    change = pipe(list(prompts), image=list(images), output_type="latent", **kwargs).images  # (B, 4, h, w)
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(list(images)).to(device=change.device, dtype=vae.dtype)
    image_latents = vae.encode(pixels).latent_dist.mode()                                    # (B, 4, h, w)
    sf = float(vae.config.scaling_factor)
    latents = change.to(vae.dtype) + image_latents * sf
    decoded = vae.decode(latents / sf, return_dict=False)[0]                                 # (B, 3, H, W)
    if change_threshold is not None:
        decoded = _keep_where_changed(vae, decoded, image_latents, change, change_threshold, change_dilate)
    return pipe.image_processor.postprocess(decoded, output_type="np", do_denormalize=[True] * len(decoded))


def _keep_where_changed(vae: Any, decoded: torch.Tensor, image_latents: torch.Tensor, change: torch.Tensor,
                        threshold: float, dilate: int) -> torch.Tensor:
    """`decoded` where the predicted `change` (B, 4, h, w) has a norm >= `threshold` (grown by
    `dilate` pixels), the decoded `image_latents` (the input's round trip) elsewhere."""
    copy = vae.decode(image_latents, return_dict=False)[0]
    keep = (change.float().norm(dim=1, keepdim=True) >= threshold).float()                  # (B, 1, h, w)
    keep = torch.nn.functional.interpolate(keep, size=decoded.shape[-2:], mode="nearest")
    if dilate:
        keep = torch.nn.functional.max_pool2d(keep, 2 * dilate + 1, stride=1, padding=dilate)
    return copy + keep.to(decoded.dtype) * (decoded - copy)


def build_pipeline(pretrained: str | Path, *, unet: Any, vae: Any = None, text_encoder: Any = None,
                   tokenizer: Any = None, torch_dtype: Optional[torch.dtype] = None) -> Any:
    """A `StableDiffusionInstructPix2PixPipeline` around `unet`, the other parts from `pretrained`
    unless given; no safety checker, as in the seed."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    parts = {k: v for k, v in (("vae", vae), ("text_encoder", text_encoder),
                               ("tokenizer", tokenizer)) if v is not None}
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        str(pretrained), unet=unet, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, **parts, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def frozen_manifest(base: str | os.PathLike) -> dict[str, str]:
    """The manifest of a base pipeline folder less its UNet (the frozen parts a light checkpoint uses)."""
    return {rel: sha for rel, sha in folder_manifest(base).items() if rel.split("/", 1)[0] != TRAINED_PART}


def write_base_ref(folder: str | os.PathLike, base: str | os.PathLike, final: str | os.PathLike) -> dict[str, Any]:
    """Write `folder/base.json`, the reference of a light checkpoint (to be renamed to `final`) to
    the frozen parts of `base` (a local pipeline folder); returns it."""
    base = Path(base).resolve()
    files = frozen_manifest(base)
    ref = {"format": BASE_REF_FORMAT, "path": str(base),
           "relative_path": os.path.relpath(base, Path(final).resolve()),
           "sha256": manifest_sha256(files), "files": files}
    write_json_atomic(Path(folder) / BASE_REF, ref)
    return ref


def resolve_base(model_dir: str | os.PathLike) -> Path:
    """The base folder `base.json` names (recorded path, else relative to the checkpoint), verified
    against the recorded sha256; ValueError naming base.json and the file otherwise."""
    ref_file = Path(model_dir) / BASE_REF
    try:
        ref = json.loads(ref_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{ref_file}: unreadable base reference ({e})") from e
    if not isinstance(ref, dict) or ref.get("format") != BASE_REF_FORMAT or not {"path", "sha256"} <= set(ref):
        raise ValueError(f"{ref_file}: not a {BASE_REF_FORMAT} base reference (with path and sha256)")
    places = [Path(ref["path"]), (Path(model_dir).resolve() / ref.get("relative_path", "")).resolve()]
    base = next((p for p in places if (p / "model_index.json").is_file()), None)
    if base is None:
        raise ValueError(f"{ref_file}: the base it names is gone (no model_index.json in "
                         f"{' or '.join(str(p) for p in places)})")
    try:
        check_manifest(base, ref["sha256"], ref.get("files", {}), manifest_of=frozen_manifest)
    except ManifestMismatch as e:
        raise ValueError(f"{ref_file}: the base's frozen parts differ from those it was trained with: {e}") from None
    return base


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length, (B, L) long."""
    assert len(prompts) > 0, "tokenize_prompts: no prompts"
    return tokenizer(list(prompts), max_length=tokenizer.model_max_length, padding="max_length",
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_token_ids(text_encoder: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) token ids -> (B, L, D) last hidden states, on the encoder's device and dtype."""
    assert input_ids.ndim == 2, f"expected (B, L) token ids, got {tuple(input_ids.shape)}"
    return text_encoder(input_ids.to(text_encoder.device))[0]


def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Prompts -> (B, L, D) text embeddings (the UNet's `encoder_hidden_states`)."""
    return encode_token_ids(text_encoder, tokenize_prompts(tokenizer, prompts))
