"""InstructPix2Pix model construction: conv_in widening and loading from tiny local folders."""

from dataclasses import replace
import pytest
import torch

from pecn_ml.models.pix2pix import (build_pipeline, encode_prompts, load_pix2pix_components,
                                    tokenize_prompts, widen_conv_in)
from pecn_ml.models.tiny import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    # one shared folder per session: build_tiny_models reuses what is already there
    return build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")


def small_unet(in_channels=4):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
        attention_head_dim=4, norm_num_groups=4).eval()


def test_widen_conv_in_keeps_old_weights_and_zeroes_new_ones():
    unet = small_unet(4)
    old_w = unet.conv_in.weight.detach().clone()
    old_b = unet.conv_in.bias.detach().clone()
    assert widen_conv_in(unet) is unet
    w = unet.conv_in.weight
    assert w.shape == (old_w.shape[0], 8, *old_w.shape[2:])
    assert unet.config.in_channels == 8 and unet.conv_in.in_channels == 8
    torch.testing.assert_close(w[:, :4], old_w, rtol=0, atol=0)
    assert torch.count_nonzero(w[:, 4:]) == 0
    torch.testing.assert_close(unet.conv_in.bias, old_b, rtol=0, atol=0)
    assert w.requires_grad  # trainable


def test_widened_unet_output_unchanged_for_zero_extra_input():
    ref = small_unet(4)
    wide = widen_conv_in(small_unet(4))
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    h = torch.randn(2, 5, 8)
    with torch.no_grad():
        expected = ref(x, t, h).sample
        got = wide(torch.cat([x, torch.zeros_like(x)], dim=1), t, h).sample
        other = wide(torch.cat([x, torch.ones_like(x)], dim=1), t, h).sample
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(other, expected)  # zero kernels: extra channels have no effect yet


def test_widen_twice_is_an_error():
    unet = widen_conv_in(small_unet(4))
    with pytest.raises(ValueError, match="already has 8"):
        widen_conv_in(unet)


def test_load_sd_checkpoint_widens_and_ip2p_is_kept(tiny_models):
    sd = load_pix2pix_components(tiny_models.sd_unet4)
    assert sd.widened and sd.unet.config.in_channels == 8
    assert torch.count_nonzero(sd.unet.conv_in.weight[:, 4:]) == 0
    ip2p = load_pix2pix_components(tiny_models.pix2pix)
    assert not ip2p.widened and ip2p.unet.config.in_channels == 8
    assert type(ip2p.noise_scheduler).__name__ == "DDPMScheduler"
    assert ip2p.noise_scheduler.config.num_train_timesteps == 1000
    assert not any(p.requires_grad for p in ip2p.vae.parameters())
    assert not any(p.requires_grad for p in ip2p.text_encoder.parameters())
    assert all(p.requires_grad for p in ip2p.unet.parameters())


def test_missing_or_wrong_folder_is_a_clear_error(tmp_path, tiny_models):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pix2pix_components(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no unet/"):
        load_pix2pix_components(tmp_path)
    with pytest.raises(FileNotFoundError, match="no unet/"):
        load_pix2pix_components(tiny_models.resnet)


def test_prompt_encoding_and_pipeline(tiny_models):
    parts = load_pix2pix_components(tiny_models.pix2pix)
    ids = tokenize_prompts(parts.tokenizer, ["moving something up", ""])
    assert ids.shape == (2, parts.tokenizer.model_max_length)
    emb = encode_prompts(parts.tokenizer, parts.text_encoder, ["moving something up", ""])
    assert emb.shape == (2, parts.tokenizer.model_max_length, parts.text_encoder.config.hidden_size)
    assert not torch.allclose(emb[0], emb[1])
    pipe = build_pipeline(tiny_models.pix2pix, unet=parts.unet, vae=parts.vae,
                          text_encoder=parts.text_encoder, tokenizer=parts.tokenizer)
    assert pipe.unet is parts.unet
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    image = torch.zeros(1, 3, 32, 32)
    out = pipe("moving something up", image=image, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)


# --- checkpoint layouts ----------------------------------------------------------------------------

def _fine_tuned_unet(base):
    """The base's UNet with changed weights, standing in for a fine-tuned one."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    with torch.no_grad():
        unet.conv_in.bias.add_(0.5)
    return unet


def _predict(model_dir):
    """(pipeline, prediction of one frame) of a checkpoint, loaded as the evaluation loads it."""
    import numpy as np

    from pecn_ml.sampling import SamplingConfig, load_pipeline, predict_batch

    pipe = load_pipeline(model_dir, torch.device("cpu"), torch.float32)
    frame = np.full((32, 32, 3), 100, np.uint8)
    return pipe, predict_batch(pipe, [frame], ["pushing something"], [7],
                               SamplingConfig(num_inference_steps=2, device="cpu", dtype="float32"))


def test_a_light_checkpoint_holds_the_unet_and_loads_like_the_full_pipeline(tiny_models, tmp_path):
    import shutil

    from pecn_ml.training.pix2pix import _save_final_pipeline
    from pecn_ml.utils.files import folder_manifest

    base = shutil.copytree(tiny_models.pix2pix, tmp_path / "outputs" / "pretrained" / "base")
    unet = _fine_tuned_unet(base)
    light = _save_final_pipeline(str(base), unet, tmp_path / "outputs" / "run" / "model")
    full = tmp_path / "full" / "model"
    build_pipeline(base, unet=unet).save_pretrained(full)          # the old layout of the same model
    assert set(folder_manifest(light)) == {"base.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"}
    pipe, light_out = _predict(light)
    assert torch.equal(pipe.unet.conv_in.bias, unet.conv_in.bias)
    _, full_out = _predict(full)
    assert (light_out == full_out).all()
    # the outputs folder moved: the base is found where it lies relative to the checkpoint
    shutil.move(tmp_path / "outputs", tmp_path / "disk2")
    moved = tmp_path / "disk2" / "run" / "model"
    assert (_predict(moved)[1] == light_out).all()
    shutil.rmtree(tmp_path / "disk2" / "pretrained")
    with pytest.raises(ValueError, match="base.json: the base it names is gone"):
        _predict(moved)


@pytest.mark.parametrize("rel", ["vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                 "tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "model_index.json"])
def test_a_light_checkpoint_refuses_a_base_whose_frozen_parts_changed(tiny_models, tmp_path, rel):
    import shutil

    from pecn_ml.artifacts import MANIFEST, ArtifactChanged, Pix2PixCheckpoint
    from pecn_ml.training.pix2pix import _save_final_pipeline
    from pecn_ml.utils.files import folder_manifest, manifest_sha256

    base = shutil.copytree(tiny_models.pix2pix, tmp_path / "base")
    light = _save_final_pipeline(str(base), _fine_tuned_unet(base), tmp_path / "model")
    files = folder_manifest(light)
    handle = Pix2PixCheckpoint(path=str(light), sha256=manifest_sha256(files), variant="next1", seed=0, steps=1,
                               final_loss=0.1, first_loss=0.2, loss_window=1, run_dir=str(tmp_path),
                               sha256_scheme=MANIFEST, files=files)
    assert handle.verify() is handle
    data = bytearray((base / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (base / rel).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"base.json: the base's frozen parts differ .*: {rel} changed"):
        _predict(light)
    with pytest.raises(ArtifactChanged, match=f"ip2p checkpoint: .*base.json: .*{rel} changed"):
        handle.verify()


def test_a_folder_that_is_neither_layout_is_refused(tmp_path):
    from pecn_ml.sampling import load_pipeline

    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="neither model_index.json .* nor base.json"):
        load_pipeline(tmp_path, torch.device("cpu"), torch.float32)


# --- latent targets ----------------------------------------------------------------------------------

def _zero_change_base(tiny_models, folder):
    """A copy of the tiny base that samples its UNet's clean-latent estimate in one DDIM step, with
    a UNet that predicts zero everywhere; `latent_target.json` is left to the caller."""
    from diffusers import UNet2DConditionModel

    from pecn_ml.models.tiny import ip2p_scheduler

    unet = UNet2DConditionModel.from_pretrained(tiny_models.pix2pix, subfolder="unet")
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    pipe = build_pipeline(tiny_models.pix2pix, unet=unet)
    pipe.scheduler = ip2p_scheduler("ddim", "sample")
    pipe.save_pretrained(folder)
    return folder, unet


def test_a_change_model_that_predicts_no_change_reproduces_latent_copy(tiny_models, tmp_path):
    """latent_target "change": the sampled latents are added to the input's, so a UNet that
    predicts zero gives exactly decode(encode(input)) -- through a light checkpoint of that base
    too, which takes the record from its base; without the record the same UNet decodes zeros."""
    import numpy as np

    from pecn_ml.models.pix2pix import latent_target, write_latent_target
    from pecn_ml.sampling import SamplingConfig, load_pipeline, predict_batch
    from pecn_ml.training.autoencoder import roundtrip
    from pecn_ml.training.pix2pix import _save_final_pipeline

    base, unet = _zero_change_base(tiny_models, tmp_path / "base")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    config = SamplingConfig(num_inference_steps=1, guidance_scale=1.0, image_guidance_scale=1.0,
                            device="cpu", dtype="float32")

    def predict(model_dir):
        pipe = load_pipeline(model_dir, torch.device("cpu"), torch.float32)
        out = predict_batch(pipe, frames, ["pushing something"] * 2, [1, 2], config, latent_target(model_dir))
        return out, roundtrip(pipe.vae, np.stack(frames))

    assert latent_target(base) == "frame" and latent_target("timbrooks/instruct-pix2pix") == "frame"
    as_frame, copy = predict(base)
    assert np.abs(as_frame.astype(int) - copy.astype(int)).mean() > 5          # decode(0) is no copy
    write_latent_target(base, "change")
    light = _save_final_pipeline(str(base), unet, tmp_path / "run" / "model")
    for model_dir in (base, light):
        assert latent_target(model_dir) == "change"
        out, copy = predict(model_dir)
        assert np.abs(out.astype(int) - copy.astype(int)).max() <= 1, model_dir   # rounding only
    (base / "latent_target.json").write_text('{"format": "pecn-latent-target-v1", "latent_target": "residual"}')
    with pytest.raises(ValueError, match="latent_target.json: not a pecn-latent-target-v1 record"):
        latent_target(base)
    with pytest.raises(ValueError, match="base.json: the base's frozen parts differ .*latent_target.json changed"):
        latent_target(light)


def test_a_change_threshold_keeps_latent_copy_where_the_model_predicts_no_change(tiny_models, tmp_path):
    """change_threshold: where the predicted change's latent norm is below it, the output is the
    input's round trip; where it reaches it, the full decode; a local change stays local."""
    import numpy as np

    from pecn_ml.models.pix2pix import _keep_where_changed, latent_target, write_latent_target
    from pecn_ml.sampling import SamplingConfig, load_pipeline, predict_batch
    from pecn_ml.training.autoencoder import roundtrip

    base, unet = _zero_change_base(tiny_models, tmp_path / "base")
    write_latent_target(base, "change")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    pipe = load_pipeline(base, torch.device("cpu"), torch.float32)
    copy = roundtrip(pipe.vae, np.stack(frames)).astype(int)
    config = SamplingConfig(num_inference_steps=1, guidance_scale=1.0, image_guidance_scale=1.0,
                            device="cpu", dtype="float32")

    def predict(bias, **kw):
        with torch.no_grad():
            pipe.unet.conv_out.bias.fill_(bias)           # the same change (norm 2 * bias) everywhere
        return predict_batch(pipe, frames, ["pushing something"] * 2, [1, 2], replace(config, **kw),
                             latent_target(base)).astype(int)

    small, large = predict(0.05), predict(0.5)
    assert np.abs(small - copy).mean() > 0.5                                   # a change, decoded
    assert np.abs(predict(0.05, change_threshold=0.2) - copy).max() <= 1       # below: latent copy
    assert np.array_equal(predict(0.5, change_threshold=0.2, change_dilate=2), large)   # above: all of it
    # one changed latent pixel (8 px at this VAE's factor 4 is 2 latents): kept within the grown patch
    torch.manual_seed(0)
    lat = torch.randn(1, 4, 8, 8)
    change = torch.zeros(1, 4, 8, 8)
    change[0, :, 3, 5] = 1.0
    decoded = pipe.vae.decode(lat + change).sample
    out = _keep_where_changed(pipe.vae, decoded, lat, change, threshold=0.2, dilate=1)
    copy_px = pipe.vae.decode(lat).sample
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[11:17, 19:25] = True                                                # rows 12-15, cols 20-23, + 1 px
    assert torch.allclose(out[..., inside], decoded[..., inside], atol=1e-6)
    assert torch.allclose(out[..., ~inside], copy_px[..., ~inside], atol=1e-6)
    assert not torch.allclose(decoded[..., ~inside], copy_px[..., ~inside], atol=1e-3)   # the decoder spread it
    with pytest.raises(ValueError, match="change_threshold must be None or > 0"):
        SamplingConfig(change_threshold=0.0)
