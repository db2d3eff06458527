"""Tiny random models for tests and the demo, saved with `save_pretrained` so that they load through
the same `from_pretrained` path as the hub's; deterministic for a seed, atomic."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pecn_ml.data.templates import load_templates
from pecn_ml.utils.files import atomic_dir

# Words the tokenizer learns whole-word merges for; everything else falls back to bytes.
_PROMPT_WORDS = (
    "generate a future frame of this action and % the has been completed "
    "cup pen book phone bottle box ball paper remote control table surface something"
)


def _tokenizer_words() -> list[str]:
    words = set(_PROMPT_WORDS.split())
    for t in load_templates():
        words.update(re.findall(r"[a-z]+", t.label_key.lower()))
    return sorted(words)


def build_tiny_tokenizer(out_dir: str | Path, model_max_length: int = 77):
    """A small CLIP BPE tokenizer: the 256-byte alphabet plus whole-word merges for SSv2 words."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode   # GPT-2/CLIP's byte-level alphabet

    alphabet = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges: list[tuple[str, str]] = []
    for word in _tokenizer_words():
        toks = list(word[:-1]) + [word[-1] + "</w>"]
        while len(toks) > 1:
            pair = (toks[0], toks[1])
            if pair not in merges:
                merges.append(pair)
            merged = pair[0] + pair[1]
            vocab.setdefault(merged, len(vocab))
            toks = [merged] + toks[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tok.save_pretrained(out_dir)
    return tok


def build_tiny_clip_text(out_dir: str | Path, hidden: int = 32, seed: int = 0) -> Path:
    """CLIPTextModel + tokenizer in one folder, like `openai/clip-vit-base-patch32` is loaded."""
    tok = build_tiny_tokenizer(out_dir)
    torch.manual_seed(seed)
    tiny_text_encoder(tok, hidden).save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_resnet(out_dir: str | Path, seed: int = 0) -> Path:
    """A two-stage ResNet (transformers `ResNetModel`), loaded like `microsoft/resnet-50`."""
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                          layer_type="basic", downsample_in_first_stage=False)
    ResNetModel(config).save_pretrained(out_dir)
    return Path(out_dir)


def tiny_unet(in_channels: int = 8, block_out_channels: tuple[int, ...] = (32, 64),
              cross_attention_dim: int = 32):
    """A two-level `UNet2DConditionModel` (cross-attention at the lower level), random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=24, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8,
    )


def tiny_vae():
    """A three-level `AutoencoderKL` (4x downsampling, 4 latent channels), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32), norm_num_groups=8, sample_size=96,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )


def tiny_text_encoder(tokenizer, hidden: int = 32):
    """A two-layer `CLIPTextModel` for `tokenizer`, random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = len(tokenizer)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    ))


SCHEDULERS = {"euler_ancestral": "EulerAncestralDiscreteScheduler", "ddim": "DDIMScheduler",
              "euler": "EulerDiscreteScheduler"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def ip2p_scheduler(kind: str = "euler_ancestral", prediction_type: str = "epsilon"):
    """The scheduler an InstructPix2Pix folder ships, with SD's betas (default: timbrooks/instruct-pix2pix's,
    Euler ancestral, epsilon); the trainer reads the prediction type from it."""
    import diffusers

    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {kind!r}; one of {sorted(SCHEDULERS)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; one of {PREDICTION_TYPES}")
    if kind == "euler_ancestral" and prediction_type == "sample":
        raise ValueError("diffusers' Euler ancestral scheduler does not implement prediction_type='sample'")
    # DDIM without clipping, "trailing" steps (one step starts from pure noise) and a last step to
    # alpha 1, so that one step returns exactly the UNet's estimate of the clean latents
    extra = (dict(clip_sample=False, set_alpha_to_one=True, steps_offset=1, timestep_spacing="trailing")
             if kind == "ddim" else {})
    return getattr(diffusers, SCHEDULERS[kind])(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, prediction_type=prediction_type, **extra,
    )


def save_pix2pix_pipeline(out_dir: str | Path, *, vae, text_encoder, tokenizer, unet, scheduler=None) -> Path:
    """Save these parts as a `StableDiffusionInstructPix2PixPipeline` folder (no safety checker)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler if scheduler is not None else ip2p_scheduler(),
        safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_pix2pix(out_dir: str | Path, in_channels: int = 8, seed: int = 0) -> Path:
    """A small random InstructPix2Pix pipeline folder; `in_channels=4`: a plain SD UNet (for `conv_in` widening)."""
    out_dir = Path(out_dir)
    tok = build_tiny_tokenizer(out_dir / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = tiny_text_encoder(tok)
    unet = tiny_unet(in_channels)
    return save_pix2pix_pipeline(out_dir, vae=tiny_vae(), text_encoder=text_encoder,
                                 tokenizer=tok, unet=unet)


@dataclass(frozen=True)
class TinyModels:
    """Folders of the tiny models; each is passed where a hub name would be."""

    pix2pix: Path
    resnet: Path
    clip_text: Path
    sd_unet4: Path  # a 4-channel Stable Diffusion-style pipeline (for conv_in widening)


def _build_once(target: Path, builder: Callable[[Path], Path]) -> Path:
    """Build into a temp folder beside `target`, then rename: a crash leaves no half model."""
    if (target / ".complete").exists():
        return target
    with atomic_dir(target) as tmp:
        builder(tmp)
        (tmp / ".complete").write_text("ok\n")
    return target


def build_tiny_models(root: str | Path) -> TinyModels:
    """Build (once) all tiny models under `root`; later calls reuse them."""
    root = Path(root)
    return TinyModels(
        pix2pix=_build_once(root / "tiny-instruct-pix2pix", build_tiny_pix2pix),
        resnet=_build_once(root / "tiny-resnet", build_tiny_resnet),
        clip_text=_build_once(root / "tiny-clip-text", build_tiny_clip_text),
        sd_unet4=_build_once(root / "tiny-sd-unet4",
                             lambda d: build_tiny_pix2pix(d, in_channels=4)),
    )
