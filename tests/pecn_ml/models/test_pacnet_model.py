"""PAC-Net model: shapes, text padding mask, heads, preprocessing, checkpoint round trip."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pecn_ml.models.pacnet import (PacNet, PacNetConfig, frames_to_input, load_pacnet,
                                   save_pacnet, uniform_indices, IMAGENET_MEAN)
from pecn_ml.models.tiny import build_tiny_models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")


def _config(tiny, **kw):
    base = dict(hidden_dim=32, num_frames=4, heads=4, image_size=None)
    base.update(kw)
    return PacNetConfig.tiny(tiny.resnet, tiny.clip_text, **base)


def _frames(B=2, T=4, S=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, S, S, 3), dtype=torch.uint8, generator=g)


def test_config_validation_and_round_trip(tiny):
    cfg = _config(tiny, head="classification")
    assert PacNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="head"):
        PacNetConfig(head="ordinal")
    with pytest.raises(ValueError, match="multiple of heads"):
        PacNetConfig(hidden_dim=30, heads=4)
    with pytest.raises(ValueError, match="unknown PacNetConfig fields"):
        PacNetConfig.from_dict({"hidden": 3}, source="x.json")
    d = PacNetConfig()
    assert (d.resnet_name, d.clip_name, d.hidden_dim, d.num_frames, d.num_classes) == (
        "microsoft/resnet-50", "openai/clip-vit-base-patch32", 512, 20, 101)


def test_frames_to_input_normalises_and_resizes():
    mean = torch.tensor(IMAGENET_MEAN) * 255
    frames = mean.round().to(torch.uint8).view(1, 1, 1, 1, 3).expand(2, 3, 16, 16, 3).contiguous()
    x = frames_to_input(frames)
    assert x.shape == (2, 3, 3, 16, 16) and x.dtype == torch.float32
    assert x.abs().max() < 0.01  # the ImageNet mean maps to ~0
    white = torch.full((1, 2, 16, 16, 3), 255, dtype=torch.uint8)
    y = frames_to_input(white, image_size=24)
    assert y.shape == (1, 2, 3, 24, 24)
    assert torch.allclose(y[0, 0, 0], torch.full((24, 24), (1 - 0.485) / 0.229), atol=1e-4)
    with pytest.raises(AssertionError):
        frames_to_input(white.float())


def test_uniform_indices_cover_range_and_repeat():
    assert uniform_indices(19, 20).tolist() == list(range(20))
    idx = uniform_indices(2, 5)
    assert idx[0] == 0 and idx[-1] == 2 and len(idx) == 5 and np.all(np.diff(idx) >= 0)


@pytest.mark.parametrize("frame_diff", [False, True])
def test_regression_forward_shapes_and_range(tiny, frame_diff):
    torch.manual_seed(0)
    model = PacNet(_config(tiny, frame_diff=frame_diff)).eval()
    assert (model.frame_encoder.diff_proj is not None) == frame_diff
    ids, mask = model.tokenize(["pushing something from left to right", "moving cup up"])
    assert ids.shape == mask.shape and ids.shape[0] == 2 and mask[1].sum() < mask[0].sum()
    frames = model.prepare_frames(_frames())
    assert frames.shape == (2, 4, 3, 32, 32)
    out = model(frames, ids, mask)
    assert out.shape == (2,) and torch.all((out >= 0) & (out <= 1))
    assert torch.equal(model.predict_progress(frames, ids, mask), out)
    # fewer frames than positions is allowed; more is an error
    assert model(frames[:, :3], ids, mask).shape == (2,)
    with pytest.raises(AssertionError):
        model(torch.cat([frames, frames], 1), ids, mask)
    with pytest.raises(AssertionError):
        model(frames, ids[:1], mask[:1])


def test_classification_head_and_expected_value(tiny):
    torch.manual_seed(0)
    model = PacNet(_config(tiny, head="classification")).eval()
    ids, mask = model.tokenize(["moving something up", "dropping pen into box"])
    frames = model.prepare_frames(_frames())
    logits = model(frames, ids, mask)
    assert logits.shape == (2, 101)
    p = model.predict_progress(frames, ids, mask)
    expected = (logits.softmax(-1) * torch.arange(101) / 100).sum(-1)
    assert p.shape == (2,) and torch.allclose(p, expected, atol=1e-6)
    assert torch.all((p >= 0) & (p <= 1))


def test_text_padding_is_masked(tiny):
    """Output for a label must not depend on how much padding its batch adds, or on pad ids."""
    torch.manual_seed(0)
    model = PacNet(_config(tiny)).eval()
    frames = model.prepare_frames(_frames(B=1))
    short = "moving cup up"
    ids1, mask1 = model.tokenize([short])
    ids2, mask2 = model.tokenize([short, "pushing something from right to left across the table"])
    assert ids2.shape[1] > ids1.shape[1] and mask2[0].sum() == mask1[0].sum()
    with torch.no_grad():
        alone = model(frames, ids1, mask1)
        padded = model(frames, ids2[:1], mask2[:1])
        noisy = ids2[:1].clone()
        noisy[mask2[:1] == 0] = 5  # garbage where the mask says padding
        garbage = model(frames, noisy, mask2[:1])
        unmasked = model(frames, ids2[:1], torch.ones_like(mask2[:1]))
    assert torch.allclose(alone, padded, atol=1e-6)
    assert torch.allclose(padded, garbage, atol=1e-6)
    assert not torch.allclose(padded, unmasked, atol=1e-6)  # the mask is what makes them equal


def test_backbone_parameters_are_resnet_and_clip(tiny):
    model = PacNet(_config(tiny))
    ids = {id(p) for p in model.backbone_parameters()}
    expected = {id(p) for p in model.frame_encoder.backbone.parameters()} | \
        {id(p) for p in model.text_encoder.backbone.parameters()}
    assert ids == expected
    assert id(model.head.weight) not in ids and id(model.frame_encoder.proj.weight) not in ids


@pytest.mark.parametrize("head", ["regression", "classification"])
def test_save_load_round_trip_is_bit_exact(tiny, tmp_path, head):
    # Backbones from a copy that is deleted before loading: the checkpoint must suffice.
    res, clip = tmp_path / "resnet", tmp_path / "clip"
    shutil.copytree(tiny.resnet, res)
    shutil.copytree(tiny.clip_text, clip)
    torch.manual_seed(1)
    model = PacNet(_config(tiny, head=head, resnet_name=str(res), clip_name=str(clip)))
    with torch.no_grad():  # make the weights differ from any fresh init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    path = save_pacnet(model, tmp_path / "ckpt")
    shutil.rmtree(res)
    shutil.rmtree(clip)
    for name in ("config.json", "model.safetensors", "resnet/config.json",
                 "clip_text/config.json", "tokenizer/tokenizer_config.json"):
        assert (path / name).is_file(), name
    loaded = load_pacnet(path)
    assert loaded.config == model.config and not loaded.training
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    texts = ["moving cup up", "pushing something from left to right"]
    ids, mask = model.tokenize(texts)
    ids2, mask2 = loaded.tokenize(texts)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    frames = model.prepare_frames(_frames())
    with torch.no_grad():
        assert torch.equal(model(frames, ids, mask), loaded(frames, ids, mask))
    # saving again over the folder replaces it atomically
    save_pacnet(loaded, path)
    assert not list(tmp_path.glob(".ckpt*"))


def test_load_errors_name_the_file(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pacnet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="config.json"):
        load_pacnet(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_pacnet(tmp_path)
