"""InstructPix2Pix training: dropout masks, the step, latent caching, the loop, resume, save/load."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from pecn_ml.data.pairs import FramePairDataset, collate_pairs
from pecn_ml.models.pix2pix import encode_prompts, load_pix2pix_components
from pecn_ml.models.tiny import build_tiny_models
from pecn_ml.training import scaffold as ckpt
from pecn_ml.training.latent_cache import LatentStore, encode_dataset
from pecn_ml.training.instruct_pretrain import InstructPretrainConfig
from pecn_ml.training.pix2pix import (LatentBatch, Pix2PixTrainConfig,
                                      cached_pair_batch, conditioning_dropout_masks,
                                      draw_step_randomness, encode_pair_batch, epoch_order, step_generator,
                                      train_pix2pix, training_step)
from pecn_ml.utils.files import sha256_file

R = 32  # frames; the tiny VAE downsamples 4x -> 8x8 latents


class FakeFrameCache:
    """In-memory frame cache (the contract of pecn_ml.data.frame_cache): a square moving right."""

    def __init__(self, lengths, resolution=R, version="fake-v1"):
        self.lengths, self.resolution, self.version = dict(lengths), resolution, version

    def num_frames(self, video_id):
        return self.lengths[video_id]

    def frame(self, video_id, idx):
        n, r = self.lengths[video_id], self.resolution
        assert 0 <= idx < n
        img = np.zeros((r, r, 3), np.uint8)
        img[..., 0] = (int(video_id) * 37) % 200
        img[..., 2] = np.linspace(0, 255, r, dtype=np.uint8)[None, :]
        x = int(idx / n * (r - 8))
        img[r // 3: r // 3 + 8, x: x + 8, 1] = 255
        return img


def make_dataset(n=10, version="fake-v1", **kw):
    cache = FakeFrameCache({str(i): 30 + i for i in range(n)}, version=version)
    ann = [{"id": str(i), "label": "pushing a cup from left to right",
            "template": "Pushing [something] from left to right"} for i in range(n)]
    return FramePairDataset(cache, ann, **kw)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module")
def parts(tiny_models):
    return load_pix2pix_components(tiny_models.pix2pix)


def small_config(**kw):
    values = dict(resolution=R, train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=4,
                  learning_rate=1e-4, checkpointing_steps=3, checkpoints_total_limit=2,
                  num_validation_samples=0, validation_inference_steps=2, seed=3, torch_threads=1,
                  mixed_precision="fp16")  # fp16 falls back to fp32 without CUDA
    values.update(kw)
    return Pix2PixTrainConfig(**values)


# --- conditioning dropout -----------------------------------------------------------------------

def test_dropout_masks_follow_the_paper_cases():
    u = torch.tensor([0.01, 0.07, 0.12, 0.2, 0.049, 0.05, 0.1, 0.15])
    drop_prompt, drop_image = conditioning_dropout_masks(u, 0.05)
    assert drop_prompt.tolist() == [True, True, False, False, True, True, False, False]
    assert drop_image.tolist() == [False, True, True, False, False, True, True, False]


def test_dropout_statistics_with_a_fixed_generator():
    g = torch.Generator().manual_seed(1234)
    u = draw_step_randomness((200_000, 4, 1, 1), 1000, generator=g, dtype=torch.float32,
                             device=torch.device("cpu")).dropout_u
    drop_prompt, drop_image = conditioning_dropout_masks(u, 0.05)
    prompt_only = (drop_prompt & ~drop_image).float().mean().item()
    both = (drop_prompt & drop_image).float().mean().item()
    image_only = (~drop_prompt & drop_image).float().mean().item()
    for frac in (prompt_only, both, image_only):
        assert abs(frac - 0.05) < 0.003
    assert abs((~drop_prompt & ~drop_image).float().mean().item() - 0.85) < 0.005


def test_step_randomness_is_a_function_of_seed_and_index():
    cpu = torch.device("cpu")
    a = draw_step_randomness((3, 4, 8, 8), 1000, generator=step_generator(7, 5, cpu),
                             dtype=torch.float32, device=cpu)
    b = draw_step_randomness((3, 4, 8, 8), 1000, generator=step_generator(7, 5, cpu),
                             dtype=torch.float32, device=cpu)
    c = draw_step_randomness((3, 4, 8, 8), 1000, generator=step_generator(7, 6, cpu),
                             dtype=torch.float32, device=cpu)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps)
    assert not torch.equal(a.noise, c.noise)
    assert a.timesteps.dtype == torch.long and int(a.timesteps.max()) < 1000


def test_min_timestep_keeps_the_draws_where_a_one_step_sampler_samples():
    cpu = torch.device("cpu")
    high = draw_step_randomness((256, 4, 2, 2), 1000, generator=step_generator(7, 5, cpu),
                                dtype=torch.float32, device=cpu, min_timestep=900)
    assert 900 <= int(high.timesteps.min()) and int(high.timesteps.max()) <= 999
    assert len(set(high.timesteps.tolist())) > 50                       # still a spread, not one value
    everywhere = draw_step_randomness((256, 4, 2, 2), 1000, generator=step_generator(7, 5, cpu),
                                      dtype=torch.float32, device=cpu)
    assert int(everywhere.timesteps.min()) < 100                         # the seed's: all of [0, 1000)
    with pytest.raises(ValueError, match="min_timestep 1000 is outside"):
        draw_step_randomness((1, 4, 2, 2), 1000, generator=step_generator(7, 5, cpu),
                             dtype=torch.float32, device=cpu, min_timestep=1000)
    with pytest.raises(ValueError, match="min_timestep"):
        Pix2PixTrainConfig(min_timestep=-1)


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet: records its inputs, predicts zeros."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = None

    def forward(self, x, t, hidden):
        self.seen = (x.detach(), t, hidden.detach())
        return type("Out", (), {"sample": x[:, :4] * self.w})()


def test_training_step_applies_dropout_and_concatenates_the_image(parts):
    b = 6
    batch = LatentBatch(torch.randn(b, 4, 8, 8), torch.full((b, 4, 8, 8), -2.0),
                        torch.randn(b, 4, 8, 8), torch.randn(b, 77, 32))
    g = torch.Generator().manual_seed(0)
    draws = draw_step_randomness((b, 4, 8, 8), 1000, generator=g, dtype=torch.float32,
                                 device=torch.device("cpu"))
    draws.dropout_u = torch.tensor([0.01, 0.07, 0.12, 0.5, 0.9, 0.3])  # prompt, both, image, -, -, -
    empty = torch.full((1, 77, 32), 7.0)
    unet = RecordingUNet()
    loss = training_step(unet, parts.noise_scheduler, batch, draws, empty_prompt_embeds=empty,
                         conditioning_dropout_prob=0.05, scaling_factor=0.5)
    x, t, hidden = unet.seen
    assert x.shape == (b, 8, 8, 8) and torch.equal(t, draws.timesteps)
    latents = (batch.target_mean + torch.exp(torch.tensor(-1.0)) * draws.latent_eps) * 0.5
    torch.testing.assert_close(x[:, :4], parts.noise_scheduler.add_noise(latents, draws.noise, draws.timesteps))
    for i, (prompt_dropped, image_dropped) in enumerate([(1, 0), (1, 1), (0, 1), (0, 0), (0, 0), (0, 0)]):
        assert torch.equal(hidden[i], empty[0] if prompt_dropped else batch.prompt_embeds[i])
        expected_image = torch.zeros(4, 8, 8) if image_dropped else batch.image_latents[i]
        assert torch.equal(x[i, 4:], expected_image)
    torch.testing.assert_close(loss, (draws.noise ** 2).mean())  # zero prediction vs noise target


def test_clean_latent_prediction_targets_the_target_latents(parts):
    """prediction_type "sample" (the demo stand-in's): the UNet is scored against the scaled clean
    target latents; a UNet that returns exactly them has zero loss, noise prediction does not."""
    from diffusers import DDPMScheduler

    b = 3
    batch = LatentBatch(torch.randn(b, 4, 8, 8), torch.full((b, 4, 8, 8), -2.0),
                        torch.randn(b, 4, 8, 8), torch.randn(b, 77, 32))
    draws = draw_step_randomness((b, 4, 8, 8), 1000, generator=torch.Generator().manual_seed(1),
                                 dtype=torch.float32, device=torch.device("cpu"))
    latents = (batch.target_mean + torch.exp(torch.tensor(-1.0)) * draws.latent_eps) * 0.5

    class Oracle(torch.nn.Module):
        def forward(self, x, t, hidden):
            return type("Out", (), {"sample": latents})()

    for prediction_type, zero in (("sample", True), ("epsilon", False)):
        scheduler = DDPMScheduler.from_config(parts.noise_scheduler.config, prediction_type=prediction_type)
        loss = training_step(Oracle(), scheduler, batch, draws, empty_prompt_embeds=torch.zeros(1, 77, 32),
                             conditioning_dropout_prob=0.0, scaling_factor=0.5)
        assert (float(loss) < 1e-12) is zero, (prediction_type, float(loss))


def test_change_targets_are_the_target_latents_minus_the_input_latents(parts):
    """latent_target "change" (the demo stand-in's): the clean latents are scale * (target - input),
    so an oracle of the change has zero loss and one of the frame does not; an unknown kind is refused."""
    from diffusers import DDPMScheduler

    b = 3
    batch = LatentBatch(torch.randn(b, 4, 8, 8), torch.full((b, 4, 8, 8), -2.0),
                        torch.randn(b, 4, 8, 8), torch.randn(b, 77, 32))
    draws = draw_step_randomness((b, 4, 8, 8), 1000, generator=torch.Generator().manual_seed(1),
                                 dtype=torch.float32, device=torch.device("cpu"))
    scheduler = DDPMScheduler.from_config(parts.noise_scheduler.config, prediction_type="sample")
    seen = {}

    class Oracle(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x, t, hidden):
            seen["noisy"] = x[:, :4]
            return type("Out", (), {"sample": self.out})()

    change = (batch.target_mean - batch.image_latents) * 0.5
    frame = batch.target_mean * 0.5
    for out, kind, zero in ((change, "change", True), (frame, "change", False), (frame, "frame", True)):
        loss = training_step(Oracle(out), scheduler, batch, draws, empty_prompt_embeds=torch.zeros(1, 77, 32),
                             conditioning_dropout_prob=0.0, scaling_factor=0.5, target_latents="mode",
                             latent_target=kind)
        assert (float(loss) < 1e-12) is zero, (kind, float(loss))
    torch.testing.assert_close(seen["noisy"], scheduler.add_noise(frame, draws.noise, draws.timesteps))
    training_step(Oracle(change), scheduler, batch, draws, empty_prompt_embeds=torch.zeros(1, 77, 32),
                  conditioning_dropout_prob=0.0, scaling_factor=0.5, target_latents="mode", latent_target="change")
    torch.testing.assert_close(seen["noisy"], scheduler.add_noise(change, draws.noise, draws.timesteps))
    with pytest.raises(ValueError, match="latent_target"):
        training_step(Oracle(change), scheduler, batch, draws, empty_prompt_embeds=torch.zeros(1, 77, 32),
                      conditioning_dropout_prob=0.0, scaling_factor=0.5, latent_target="residual")


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_models):
    torch.manual_seed(0)
    p = load_pix2pix_components(tiny_models.pix2pix)
    emb = encode_prompts(p.tokenizer, p.text_encoder, ["pushing something from left to right"] * 4)
    empty = encode_prompts(p.tokenizer, p.text_encoder, [""])
    batch = LatentBatch(torch.randn(4, 4, 8, 8), torch.full((4, 4, 8, 8), -4.0),
                        torch.randn(4, 4, 8, 8), emb)
    draws = draw_step_randomness((4, 4, 8, 8), 1000, generator=torch.Generator().manual_seed(1),
                                 dtype=torch.float32, device=torch.device("cpu"))
    opt = torch.optim.AdamW(p.unet.parameters(), lr=2e-3)
    p.unet.train()
    losses = []
    for _ in range(12):
        loss = training_step(p.unet, p.noise_scheduler, batch, draws, empty_prompt_embeds=empty,
                             conditioning_dropout_prob=0.05, scaling_factor=0.18215)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- latent cache -------------------------------------------------------------------------------

def test_cached_latents_give_the_same_loss_as_encoding(parts, tmp_path):
    ds = make_dataset(6, add_progress=True)
    store = LatentStore(tmp_path / "cache", parts.vae, parts.tokenizer, parts.text_encoder, batch_size=4)
    cached = encode_dataset(store, ds)
    assert store.encoded == {"frames": 12, "prompts": len(set(ds.prompts))}
    assert cached.image_latents.shape == (6, 4, 8, 8) and cached.prompt_embeds.ndim == 3
    idx = torch.tensor([4, 1, 2])
    from_cache = cached_pair_batch(cached, idx, torch.device("cpu"))
    encoded = encode_pair_batch(parts.vae, parts.tokenizer, parts.text_encoder,
                                collate_pairs([ds[i] for i in idx.tolist()]))
    for name in ("target_mean", "target_logvar", "image_latents", "prompt_embeds"):
        torch.testing.assert_close(getattr(from_cache, name), getattr(encoded, name),
                                   rtol=1e-5, atol=1e-5)
    empty = encode_prompts(parts.tokenizer, parts.text_encoder, [""])
    losses = []
    for batch in (from_cache, encoded):
        draws = draw_step_randomness(batch.target_mean.shape, 1000,
                                     generator=step_generator(0, 3, torch.device("cpu")),
                                     dtype=torch.float32, device=torch.device("cpu"))
        with torch.no_grad():
            losses.append(training_step(parts.unet, parts.noise_scheduler, batch, draws,
                                        empty_prompt_embeds=empty, conditioning_dropout_prob=0.05,
                                        scaling_factor=parts.vae.config.scaling_factor).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_latent_cache_is_reused_across_variants_and_keyed_by_version(parts, tmp_path):
    root = tmp_path / "cache"
    first = LatentStore(root, parts.vae, parts.tokenizer, parts.text_encoder)
    a = encode_dataset(first, make_dataset(5, target_idx=21))
    # next5 with progress: frame 20 and every video known; only frame 25 and new prompts encoded
    second = LatentStore(root, parts.vae, parts.tokenizer, parts.text_encoder)
    b = encode_dataset(second, make_dataset(5, target_idx=25, add_progress=True))
    assert second.loaded["frames"] == 5 and second.encoded["frames"] == 5
    assert second.encoded["prompts"] == 5  # each video has its own progress percent
    assert torch.equal(a.image_latents, b.image_latents)
    # the same variant again: nothing to encode
    third = LatentStore(root, parts.vae, parts.tokenizer, parts.text_encoder)
    c = encode_dataset(third, make_dataset(5, target_idx=21))
    assert third.encoded == {"frames": 0, "prompts": 0}
    assert torch.equal(c.target_logvar, a.target_logvar) and torch.equal(c.prompt_embeds, a.prompt_embeds)
    # another frame-cache version must not reuse those latents
    fourth = LatentStore(root, parts.vae, parts.tokenizer, parts.text_encoder)
    encode_dataset(fourth, make_dataset(5, target_idx=21, version="fake-v2"))
    assert fourth.encoded["frames"] == 10


def test_damaged_cache_shard_is_named(parts, tmp_path):
    store = LatentStore(tmp_path / "cache", parts.vae, parts.tokenizer, parts.text_encoder)
    encode_dataset(store, make_dataset(2))
    shard = next((tmp_path / "cache").rglob("f021-*.safetensors"))
    shard.write_bytes(b"garbage")
    again = LatentStore(tmp_path / "cache", parts.vae, parts.tokenizer, parts.text_encoder)
    with pytest.raises(ValueError, match="unreadable latent-cache shard"):
        encode_dataset(again, make_dataset(2))


def test_epoch_order_is_a_function_of_seed_and_epoch():
    e0, e1 = epoch_order(5, 0, 20), epoch_order(5, 1, 20)
    assert sorted(e0) == list(range(20)) and e0 != e1
    assert epoch_order(5, 1, 20) == e1


# --- the loop -----------------------------------------------------------------------------------

class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_weights(tiny_models, tmp_path):
    ds = make_dataset(10)            # 3 micro-batches of 4 per epoch, 2 optimizer steps per epoch
    val = make_dataset(2)
    cfg = small_config(num_validation_samples=2)
    full = train_pix2pix(tiny_models.pix2pix, ds, cfg, tmp_path / "full", val_dataset=val)
    assert full.steps == 8 and full.epochs == 4 and len(full.loss_curve) == 8
    assert all(np.isfinite(full.loss_curve))

    def stop_after_step_3(msg):     # step 3 is mid-epoch: resume must skip 2 micro-batches
        if msg.startswith("saved checkpoint") and msg.endswith("checkpoint-3"):
            raise Interrupt(msg)

    with pytest.raises(Interrupt):
        train_pix2pix(tiny_models.pix2pix, ds, cfg, tmp_path / "cut", val_dataset=val,
                      log=stop_after_step_3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [3]
    assert not (tmp_path / "cut" / "model").exists()
    resumed = train_pix2pix(tiny_models.pix2pix, ds, cfg, tmp_path / "cut", val_dataset=val)
    assert resumed.resumed_from_step == 3
    assert resumed.unet_sha256 == full.unet_sha256
    assert resumed.loss_curve == full.loss_curve
    assert resumed.final_loss == pytest.approx(full.final_loss)
    # rotation: limit 2, checkpoints at steps 3 and 6
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "cut")] == [3, 6]

    # the outputs
    assert sha256_file(full.model_dir / "unet" / "diffusion_pytorch_model.safetensors") == full.unet_sha256
    from PIL import Image
    grid = Image.open(full.validation_grid)
    assert grid.width > 3 * R and grid.height > 2 * R
    assert Image.open(full.loss_curve_png).size == (640, 360)
    assert list(full.tensorboard_dir.glob("events.out.tfevents.*"))
    assert full.latent_cache["enabled"] and full.latent_cache["encoded"]["frames"] == 20

    # save/load round trip: the pipeline loads and holds the trained UNet
    from diffusers import UNet2DConditionModel

    from pecn_ml.sampling import load_pipeline
    # a local base: the light layout, the trained UNet and a reference to the base's frozen parts
    assert (full.model_dir / "base.json").is_file() and not (full.model_dir / "vae").exists()
    pipe = load_pipeline(full.model_dir, torch.device("cpu"), torch.float32)
    assert pipe.unet.config.in_channels == 8
    saved = UNet2DConditionModel.from_pretrained(resumed.model_dir, subfolder="unet").state_dict()
    pretrained = UNet2DConditionModel.from_pretrained(tiny_models.pix2pix, subfolder="unet").state_dict()
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert any(not torch.equal(v, pretrained[k]) for k, v in saved.items())  # it did train
    vae0 = load_pix2pix_components(tiny_models.pix2pix).vae.state_dict()
    assert all(torch.equal(v, vae0[k]) for k, v in pipe.vae.state_dict().items())  # frozen, fp32
    out = pipe("pushing something from left to right", image=torch.zeros(1, 3, R, R),
               num_inference_steps=2, output_type="np").images
    assert out.shape == (1, R, R, 3)

    # a checkpoint of another run (other data here) is not resumed: training starts over
    lines = []
    other = train_pix2pix(tiny_models.pix2pix, make_dataset(9), cfg, tmp_path / "cut",
                          log=lines.append)
    assert other.resumed_from_step is None and other.unet_sha256 != full.unet_sha256
    assert any("checkpoint is of another run (differs in ['pairs'" in line for line in lines)


def test_another_seed_in_the_same_folder_trains_with_that_seed(tiny_models, tmp_path):
    """A checkpoint of another run lends it nothing, its seed included; one of the same run does."""
    ds = make_dataset(4)             # one micro-batch per epoch: 2 optimizer steps, checkpoint-1 kept
    cfg = small_config(max_train_steps=2, gradient_accumulation_steps=1, checkpointing_steps=1,
                       checkpoints_total_limit=1, seed=0)
    out = tmp_path / "next1"
    first = train_pix2pix(tiny_models.pix2pix, ds, cfg, out)
    assert first.seed == 0 and ckpt.read_state(ckpt.latest_checkpoint(out))["base_seed"] == 0

    lines = []
    seven = train_pix2pix(tiny_models.pix2pix, ds, replace(cfg, seed=7), out,
                          log=lines.append)
    assert any("checkpoint is of another run (differs in ['seed'])" in line for line in lines)
    assert seven.resumed_from_step is None and seven.seed == 7
    assert any(line.endswith("seed 7") for line in lines)
    assert ckpt.read_state(ckpt.latest_checkpoint(out))["base_seed"] == 7
    assert seven.unet_sha256 != first.unet_sha256

    # a retried step of the seed-7 run resumes its checkpoint and keeps its seed
    again = train_pix2pix(tiny_models.pix2pix, ds, replace(cfg, seed=7), out)
    assert again.resumed_from_step == 1 and again.seed == 7
    assert again.unet_sha256 == seven.unet_sha256


def test_checkpoint_resumes_after_the_pretrained_folder_moved(tiny_models, tmp_path):
    """The fingerprint holds the pretrained weights' sha, not their folder's path."""
    ds = make_dataset(4)
    cfg = small_config(max_train_steps=2, gradient_accumulation_steps=1, checkpointing_steps=1,
                       checkpoints_total_limit=1)
    out = tmp_path / "next1"
    first = train_pix2pix(tiny_models.pix2pix, ds, cfg, out)
    moved = shutil.copytree(tiny_models.pix2pix, tmp_path / "moved" / "pix2pix")
    lines = []
    again = train_pix2pix(moved, ds, cfg, out, log=lines.append)
    assert not [line for line in lines if "another run" in line]
    assert again.resumed_from_step == 1 and again.unet_sha256 == first.unet_sha256
    # other weights in that same folder are another run
    shutil.rmtree(moved)
    shutil.copytree(tiny_models.sd_unet4, moved)
    lines = []
    other = train_pix2pix(moved, ds, cfg, out, log=lines.append)
    assert other.resumed_from_step is None
    assert any("differs in ['pretrained']" in line for line in lines)


def test_train_from_sd_checkpoint_uncached_without_seed(tiny_models, tmp_path):
    ds = make_dataset(5, target_idx=25, add_progress=True)
    cfg = small_config(seed=None, cache_latents=False, max_train_steps=2, gradient_accumulation_steps=1,
                       checkpointing_steps=1, checkpoints_total_limit=1)
    lines = []
    res = train_pix2pix(tiny_models.sd_unet4, ds, cfg, tmp_path / "sd", log=lines.append)
    assert res.steps == 2 and res.validation_grid is None
    assert json.loads((res.model_dir / "unet" / "config.json").read_text())["in_channels"] == 8
    assert any("widened to 8 input channels" in line for line in lines)
    assert any(line.startswith("pix2pix train: 2/2 steps") and "loss" in line for line in lines)
    state = ckpt.read_state(ckpt.latest_checkpoint(tmp_path / "sd"))
    assert isinstance(state["base_seed"], int)   # a random seed, recorded for resume
    assert res.latent_cache == {"enabled": False}


def test_config_validation_and_demo():
    with pytest.raises(ValueError, match="mixed_precision"):
        Pix2PixTrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="conditioning_dropout_prob"):
        Pix2PixTrainConfig(conditioning_dropout_prob=0.5)
    d = Pix2PixTrainConfig()
    assert (d.resolution, d.train_batch_size, d.gradient_accumulation_steps, d.learning_rate,
            d.num_train_epochs, d.mixed_precision, d.validation_epochs, d.num_validation_samples) == (
        224, 4, 4, 5e-6, 40, "fp16", 10, 2)
    assert Pix2PixTrainConfig.demo().resolution == 96
    with pytest.raises(ValueError, match="resolution"):
        train_pix2pix("unused", make_dataset(2), Pix2PixTrainConfig.demo(), "/nonexistent/never")


def test_gpu_benchmark_runs_its_tiny_cpu_smoke_check(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_pix2pix_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_pix2pix_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--tiny", "--steps", "1", "--warmup", "1", "--repeat", "1", "--pairs", "4",
                      "--json", str(tmp_path / "gpu.json")])
    assert out["device"] == "cpu" and out["tiny"]
    assert out["ours"]["steps_per_s"] > 0 and out["reference"]["steps_per_s"] > 0
    assert json.loads((tmp_path / "gpu.json").read_text())["ratio"] == out["ratio"]


def test_accelerator_leaves_gradient_accumulation_to_the_loop():
    """The loop accumulates itself (exact global-batch means); accelerate's stays 1. (An earlier
    test's Accelerator state is reset by the conftest fixture, not by the library.)"""
    acc = ckpt.build_accelerator("bf16", False, print)
    assert acc.mixed_precision == "bf16" and acc.gradient_accumulation_steps == 1


def test_the_saved_pipeline_carries_a_model_card_and_still_loads(tiny_models, tmp_path):
    from huggingface_hub import ModelCard

    from pecn_ml.model_cards import BaseWeights, CardContext
    from pecn_ml.artifacts import Pix2PixCheckpoint
    from pecn_ml.sampling import checkpoint_sha256, load_pipeline
    from pecn_ml.utils.files import manifest_sha256

    ds = make_dataset(4, target_idx=25, add_progress=True)
    cfg = small_config(max_train_steps=2, gradient_accumulation_steps=1, checkpointing_steps=5, seed=4)
    base = BaseWeights("pix2pix_base", "timbrooks/instruct-pix2pix", "a" * 40, "b" * 64, "mit")
    context = CardContext(run_id="run-9", bases=(base,), data_versions={"annotations": "ann-v1", "frame_cache": "fc-v2"},
                          extra={"variant": "next5_progress", "prompt_form": "Generate ... {percent}% ..."})
    res = train_pix2pix(tiny_models.pix2pix, ds, cfg, tmp_path / "run", card=context)
    card = ModelCard.load(res.model_dir / "README.md").data.to_dict()
    assert card["dagster_run_id"] == "run-9" and card["seed"] == 4 and card["variant"] == "next5_progress"
    assert card["base_model"] == "timbrooks/instruct-pix2pix" and card["license"] == "mit"
    assert card["base_weights"] == [{"role": "pix2pix_base", "name": "timbrooks/instruct-pix2pix",
                                     "revision": "a" * 40, "sha256": "b" * 64, "license": "mit"}]
    assert {"annotations", "frame_cache", "train_pairs_sha256"} <= set(card["data_versions"])
    assert card["training_config"]["max_train_steps"] == 2 and card["prompt_form"].endswith("...")
    assert card["loss_summary"]["steps"] == 2 and card["loss_summary"]["final_loss"] == pytest.approx(res.final_loss)
    assert card["target_idx"] == 25 and "% of the action has been completed." in card["prompt_example"]
    # the folder loads as before; the checkpoint's sha covers every file of it but the card
    load_pipeline(res.model_dir, torch.device("cpu"), torch.float32)
    assert checkpoint_sha256(res.model_dir) == res.checkpoint_sha256 == manifest_sha256(res.checkpoint_files)
    assert set(res.checkpoint_files) == {"base.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"}
    assert "README.md" not in res.checkpoint_files
    assert res.checkpoint_files["unet/diffusion_pytorch_model.safetensors"] == res.unet_sha256
    handle = Pix2PixCheckpoint.from_result(res, "next5_progress", 4, tmp_path / "run", "run-9", "b" * 64, "frame count")
    assert handle.verify() is handle and handle.sha256 == res.checkpoint_sha256
    # without a context: the base as the trainer knows it (the local folder, by its weights' sha)
    plain = train_pix2pix(tiny_models.pix2pix, ds, cfg, tmp_path / "plain")
    bases = ModelCard.load(plain.model_dir / "README.md").data.base_weights
    assert bases[0]["name"] == str(tiny_models.pix2pix) and len(bases[0]["sha256"]) == 64


def test_mode_targets_ignore_the_posterior_draw_and_sample_targets_follow_it(parts):
    """target_latents "mode" (the demo's): the target is the posterior mean whatever eps is drawn;
    "sample" (the seed's): the loss moves with the posterior draw."""
    from diffusers import DDPMScheduler

    b = 3
    batch = LatentBatch(torch.randn(b, 4, 8, 8), torch.full((b, 4, 8, 8), -2.0),
                        torch.randn(b, 4, 8, 8), torch.randn(b, 77, 32))
    scheduler = DDPMScheduler.from_config(parts.noise_scheduler.config, prediction_type="sample")

    class Oracle(torch.nn.Module):                     # returns the scaled posterior mean exactly
        def forward(self, x, t, hidden):
            return type("Out", (), {"sample": batch.target_mean * 0.5})()

    def loss(seed: int, mode: str) -> float:
        draws = draw_step_randomness((b, 4, 8, 8), 1000, generator=torch.Generator().manual_seed(seed),
                                     dtype=torch.float32, device=torch.device("cpu"))
        return float(training_step(Oracle(), scheduler, batch, draws, empty_prompt_embeds=torch.zeros(1, 77, 32),
                                   conditioning_dropout_prob=0.0, scaling_factor=0.5, target_latents=mode))

    assert loss(1, "mode") < 1e-12 and loss(2, "mode") < 1e-12
    assert loss(1, "sample") > 1e-4 and loss(1, "sample") != loss(2, "sample")
    with pytest.raises(ValueError, match="target_latents"):
        loss(1, "median")
    with pytest.raises(ValueError, match="target_latents"):
        Pix2PixTrainConfig(target_latents="median")
    with pytest.raises(ValueError, match="target_latents"):
        InstructPretrainConfig(target_latents="median")
