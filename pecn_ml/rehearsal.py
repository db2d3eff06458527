"""The real run's models at their real sizes, with random weights, built locally (no hub).

`build_rehearsal_models(root)` writes three folders laid out like the hub repositories the `full`
profile loads, so they can be passed where the hub names would be:

| folder              | stands for                      | architecture (config of the hub repo)                 |
|---------------------|---------------------------------|-------------------------------------------------------|
| `instruct-pix2pix/` | `timbrooks/instruct-pix2pix`    | SD-1.5 UNet with 8 input channels, SD VAE, CLIP ViT-L/14 text encoder, tokenizer, scheduler |
| `resnet-50/`        | `microsoft/resnet-50`           | `ResNetModel`, bottleneck 3-4-6-3                      |
| `clip-vit-base-patch32/` | `openai/clip-vit-base-patch32` | `CLIPTextModel` (512 wide, 12 layers) + tokenizer |

Weights are fp32 safetensors (`save_pretrained`). Only the tokenizer is small: the byte-level
BPE of `pecn_ml.models.tiny` (the hub's merges are not available offline); the text encoders
keep CLIP's 49,408-token embedding, so every parameter count is the real one
(`rehearsal_param_counts`, computed on the meta device without allocating weights).

Memory: one model at a time is in memory (the pipeline's parts together, 4.3 GB of weights,
then each PAC-Net backbone); safetensors writes straight from the tensors, without a copy.
Measured on the 2-core machine: 33 s wall, peak RSS 4.40 GiB, 4.61 GB on disk.

    python -m pecn_ml.rehearsal --out outputs/rehearsal_models   # builds once, prints sizes and costs
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from pecn_ml.models.tiny import _build_once, build_tiny_tokenizer, save_pix2pix_pipeline

CLIP_VOCAB = 49408
CLIP_MAX_LEN = 77

# diffusers UNet2DConditionModel: Stable Diffusion 1.5, widened to 8 input channels as in
# timbrooks/instruct-pix2pix (noisy latents + image latents).
SD15_UNET = dict(
    sample_size=64, in_channels=8, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=768, attention_head_dim=8,
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    downsample_padding=1, center_input_sample=False,
)

# diffusers AutoencoderKL: the Stable Diffusion VAE (8x downsampling, 4 latent channels).
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
    sample_size=512, scaling_factor=0.18215,
)

# transformers CLIPTextConfig of openai/clip-vit-large-patch14 (SD 1.5's text encoder) and of
# openai/clip-vit-base-patch32; token ids are set to the tokenizer's when a folder is built.
CLIP_L14_TEXT = dict(vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                     max_position_embeddings=CLIP_MAX_LEN, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5)
CLIP_B32_TEXT = dict(CLIP_L14_TEXT, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                     projection_dim=512)

# transformers ResNetConfig of microsoft/resnet-50.
RESNET50 = dict(num_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                depths=[3, 4, 6, 3], layer_type="bottleneck", hidden_act="relu",
                downsample_in_first_stage=False)


@dataclass(frozen=True)
class RehearsalModels:
    """Folders of the full-size random models; each is passed where a hub name would be."""

    pix2pix: Path     # for timbrooks/instruct-pix2pix
    resnet: Path      # for microsoft/resnet-50
    clip_text: Path   # for openai/clip-vit-base-patch32


# --- builders (each takes its configs, so a test can run them at a small size) -------------------

def _clip_text_config(arch: dict, tokenizer: Any = None):
    from transformers import CLIPTextConfig

    ids = {}
    if tokenizer is not None:  # the token ids of the tokenizer this encoder ships with
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        ids = dict(bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                   eos_token_id=eos, pad_token_id=eos)
    return CLIPTextConfig(**arch, **ids)


def unet(config: dict = SD15_UNET):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def vae(config: dict = SD_VAE):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)


def clip_text(arch: dict, tokenizer: Any = None):
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_text_config(arch, tokenizer))


def resnet(config: dict = RESNET50):
    from transformers import ResNetConfig, ResNetModel

    return ResNetModel(ResNetConfig(**config))


def build_pix2pix_folder(out_dir: str | Path, *, unet_config: dict = SD15_UNET,
                         vae_config: dict = SD_VAE, text_config: dict = CLIP_L14_TEXT,
                         seed: int = 0) -> Path:
    """An InstructPix2Pix pipeline folder (`save_pix2pix_pipeline`) of random parts in fp32."""
    out_dir = Path(out_dir)
    tok = build_tiny_tokenizer(out_dir / "tokenizer", model_max_length=CLIP_MAX_LEN)
    torch.manual_seed(seed)
    return save_pix2pix_pipeline(out_dir, vae=vae(vae_config),
                                 text_encoder=clip_text(text_config, tok), tokenizer=tok,
                                 unet=unet(unet_config))


def build_clip_text_folder(out_dir: str | Path, *, text_config: dict = CLIP_B32_TEXT,
                           seed: int = 0) -> Path:
    """CLIPTextModel + tokenizer in one folder, loaded like `openai/clip-vit-base-patch32`."""
    out_dir = Path(out_dir)
    tok = build_tiny_tokenizer(out_dir, model_max_length=CLIP_MAX_LEN)
    torch.manual_seed(seed)
    clip_text(text_config, tok).save_pretrained(out_dir)
    return out_dir


def build_resnet_folder(out_dir: str | Path, *, config: dict = RESNET50, seed: int = 0) -> Path:
    """`ResNetModel` folder, loaded like `microsoft/resnet-50`."""
    torch.manual_seed(seed)
    resnet(config).save_pretrained(out_dir)
    return Path(out_dir)


def _built(target: Path, builder: Callable[[Path], Path], on_built: Optional[Callable] = None
           ) -> Path:
    """`_build_once`, then free the builder's tensors before the next model is built."""
    t0 = time.perf_counter()
    fresh = not (target / ".complete").exists()
    path = _build_once(target, builder)
    gc.collect()
    if on_built is not None:
        on_built(path, time.perf_counter() - t0, fresh)
    return path


def model_folders(root: str | Path) -> RehearsalModels:
    """Where `build_rehearsal_models(root)` puts each model (nothing is built or checked)."""
    root = Path(root)
    return RehearsalModels(pix2pix=root / "instruct-pix2pix", resnet=root / "resnet-50",
                           clip_text=root / "clip-vit-base-patch32")


def rehearsal_models_complete(root: str | Path) -> bool:
    """True when every folder under `root` was built to the end (its `.complete` marker)."""
    folders = model_folders(root)
    return all((Path(f) / ".complete").exists() for f in (folders.pix2pix, folders.resnet, folders.clip_text))


def build_rehearsal_models(root: str | Path, on_built: Optional[Callable] = None
                           ) -> RehearsalModels:
    """Build (once, atomically) the full-size random models under `root`; later calls reuse them.
    `on_built(path, seconds, fresh)` is called after each folder."""
    folders = model_folders(root)
    return RehearsalModels(
        pix2pix=_built(folders.pix2pix, build_pix2pix_folder, on_built),
        resnet=_built(folders.resnet, build_resnet_folder, on_built),
        clip_text=_built(folders.clip_text, build_clip_text_folder, on_built),
    )


# --- sizes ---------------------------------------------------------------------------------------

def count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def rehearsal_param_counts() -> dict[str, int]:
    """Parameters of each rehearsal model, from their configs on the meta device (no weights are
    allocated): `unet`, `vae`, `text_encoder` (the pipeline's), `resnet`, `clip_text`."""
    with torch.device("meta"):
        builders = {"unet": unet, "vae": vae, "text_encoder": lambda: clip_text(CLIP_L14_TEXT),
                    "resnet": resnet, "clip_text": lambda: clip_text(CLIP_B32_TEXT)}
        return {name: count_params(build()) for name, build in builders.items()}


def _main(argv: Optional[list[str]] = None) -> None:
    from pecn_ml.utils.usage import bytes_on_disk, peak_rss

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/rehearsal_models", help="folder for the three models")
    args = parser.parse_args(argv)
    for name, n in rehearsal_param_counts().items():
        print(f"{name:>13}: {n:,} parameters")

    def report(path: Path, seconds: float, fresh: bool) -> None:
        what = "built" if fresh else "reused"
        print(f"{path.name:>22}: {what} in {seconds:.1f}s, {bytes_on_disk(path):,} bytes on disk, "
              f"peak RSS so far {peak_rss().self_bytes / 2**30:.2f} GiB", flush=True)

    t0 = time.perf_counter()
    models = build_rehearsal_models(args.out, on_built=report)
    print(f"done in {time.perf_counter() - t0:.1f}s: {models}")


if __name__ == "__main__":
    _main()
