"""Rehearsal models: the real architectures' parameter counts (meta device, no weights), and the
folder builders at small sizes (same layout as the tiny pipeline, loadable by the real loaders)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pecn_ml.models.pix2pix import load_pix2pix_components
from pecn_ml.models.tiny import build_tiny_pix2pix
from pecn_ml.rehearsal import (CLIP_B32_TEXT, CLIP_L14_TEXT, RESNET50, SD15_UNET, SD_VAE,
                               build_clip_text_folder, build_pix2pix_folder, build_resnet_folder,
                               rehearsal_param_counts)

# The published sizes: SD 1.5's UNet has 859,520,964 parameters with 4 input channels; the
# InstructPix2Pix UNet adds 4 x 320 x 3 x 3 conv_in weights. SD VAE, CLIP ViT-L/14 text model,
# ResNet-50 without its classifier, CLIP ViT-B/32 text model.
EXPECTED = {"unet": 859_520_964 + 4 * 320 * 9, "vae": 83_653_863, "text_encoder": 123_060_480,
            "resnet": 23_508_032, "clip_text": 63_165_952}

SMALL_UNET = dict(SD15_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32,
                  norm_num_groups=8, attention_head_dim=4, layers_per_block=1, sample_size=8)
SMALL_VAE = dict(SD_VAE, block_out_channels=(8, 16, 16, 16), norm_num_groups=8, layers_per_block=1)
SMALL_TEXT = dict(CLIP_L14_TEXT, vocab_size=2048, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=2, projection_dim=32)


def test_parameter_counts_are_the_real_models():
    counts = rehearsal_param_counts()
    assert counts == EXPECTED
    assert all(isinstance(v, int) for v in counts.values())


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_pix2pix_folder_is_laid_out_like_the_pipeline_and_loads(tmp_path):
    folder = build_pix2pix_folder(tmp_path / "ip2p", unet_config=SMALL_UNET, vae_config=SMALL_VAE,
                                  text_config=SMALL_TEXT)
    reference = build_tiny_pix2pix(tmp_path / "tiny")
    assert _files(folder) == _files(reference)
    index = json.loads((folder / "model_index.json").read_text())
    assert index == {**json.loads((reference / "model_index.json").read_text()),
                     "_diffusers_version": index["_diffusers_version"]}
    parts = load_pix2pix_components(folder)
    assert not parts.widened and parts.unet.config.in_channels == 8
    assert parts.unet.dtype == torch.float32
    ids = parts.tokenizer(["generate a future frame"], padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    assert int(ids.max()) < SMALL_TEXT["vocab_size"]
    assert parts.text_encoder.config.eos_token_id == parts.tokenizer.eos_token_id
    hidden = parts.text_encoder(ids).last_hidden_state                    # (1, 77, 32)
    latents = torch.randn(1, 8, 8, 8)
    out = parts.unet(latents, torch.tensor([10]), hidden).sample          # (1, 4, 8, 8)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_pacnet_backbone_folders_load_in_pacnet(tmp_path):
    from pecn_ml.models.pacnet import PacNet, PacNetConfig

    resnet = build_resnet_folder(tmp_path / "resnet-50",
                                 config=dict(RESNET50, hidden_sizes=[16, 32, 32, 64], embedding_size=8))
    clip = build_clip_text_folder(tmp_path / "clip", text_config=SMALL_TEXT)
    assert {"config.json", "model.safetensors"} <= _files(resnet)
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= _files(clip)
    model = PacNet(PacNetConfig.tiny(resnet, clip, hidden_dim=32, num_frames=4, heads=4))
    frames = torch.randint(0, 256, (2, 4, 24, 24, 3), dtype=torch.uint8)
    ids, mask = model.tokenize(["pushing something", "dropping something"])
    out = model(model.prepare_frames(frames), ids, mask)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert CLIP_B32_TEXT["hidden_size"] == 512 and CLIP_B32_TEXT["num_hidden_layers"] == 12
