"""Stand-ins for the pretrained weights: trained, loadable like the hub models, content-addressed,
and the three trainers behind them (autoencoder, instruct pretraining, ResNet pretraining)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from pecn_ml.metrics import psnr
from pecn_ml.model_cards import read_card
from pecn_ml.models.standins import (StandinConfig, build_standin_clip_text, build_standin_pix2pix,
                                     build_standin_resnet, standin_key)
from pecn_ml.models.tiny import tiny_vae
from pecn_ml.training.autoencoder import (AutoencoderTrainConfig, latent_scaling_factor, roundtrip,
                                          train_autoencoder)
from pecn_ml.training.instruct_pretrain import InstructPretrainConfig, encode_videos, pretraining_prompts
from pecn_ml.training.resnet_pretrain import ResnetPretrainConfig, motion_masks, region_stats
from pecn_test_support.moving_squares import moving_square_video


def _videos(n=4, size=32, frames=10, seed=0):
    rng = np.random.default_rng(seed)
    return [moving_square_video(frames, size, rng=rng) for _ in range(n)]


TINY = StandinConfig(autoencoder=AutoencoderTrainConfig(steps=30, batch_size=8, crop=16),
                     instruct=InstructPretrainConfig(steps=6, batch_size=4),
                     resnet=ResnetPretrainConfig(steps=4, batch_size=8))


def test_autoencoder_training_improves_the_round_trip():
    torch.manual_seed(0)
    frames = np.concatenate(_videos(6))                                  # (60, 32, 32, 3)
    vae = tiny_vae()
    before = np.mean(psnr(roundtrip(vae, frames[:8]), frames[:8]))
    losses = train_autoencoder(vae, frames, AutoencoderTrainConfig(steps=150, batch_size=16, crop=16))
    after = np.mean(psnr(roundtrip(vae, frames[:8]), frames[:8]))
    assert len(losses) == 150 and np.mean(losses[-10:]) < np.mean(losses[:10])
    assert after > before + 5, (before, after)
    assert not any(p.requires_grad for p in vae.parameters())          # frozen afterwards
    means = torch.cat([vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean])
    assert means.shape == (1, 4, 8, 8)                                   # 4x downsampling
    with pytest.raises(ValueError, match="multiple of"):
        train_autoencoder(vae, frames, AutoencoderTrainConfig(steps=1, crop=18))


@torch.no_grad()
def test_scaling_factor_gives_unit_variance_latents():
    torch.manual_seed(0)
    vae, frames = tiny_vae(), np.concatenate(_videos(2))
    s = latent_scaling_factor(vae, frames)
    from pecn_ml.training.autoencoder import frames_to_pixels
    z = vae.encode(frames_to_pixels(frames)).latent_dist.mean * s
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)


def test_generic_pairs_cover_every_offset():
    torch.manual_seed(0)
    lat = encode_videos(tiny_vae(), _videos(2, frames=6), max_offset=2)
    assert lat.mean.shape == (12, 4, 8, 8)
    # per video: 5 pairs with k=1 and 4 with k=2; the second video's rows start at 6
    assert len(lat.pairs) == 2 * (5 + 4)
    # (input row, target row, k, video)
    assert {tuple(p) for p in lat.pairs.tolist()} >= {(0, 1, 1, 0), (0, 2, 2, 0), (6, 7, 1, 1), (9, 11, 2, 1)}
    assert all(t - i == k and v == int(i >= 6) for i, t, k, v in lat.pairs.tolist())


def test_action_prompts_carry_each_videos_text_and_the_gap():
    config = InstructPretrainConfig(max_offset=2, prompt="action")
    prompts, index = pretraining_prompts(config, ["pushing something", "pulling something", "pushing something"], 3)
    assert prompts == sorted({"pushing something, 1 frames later", "pushing something, 2 frames later",
                              "pulling something, 1 frames later", "pulling something, 2 frames later"})
    assert [prompts[i] for i in index] == ["pushing something, 1 frames later", "pushing something, 2 frames later",
                                           "pulling something, 1 frames later", "pulling something, 2 frames later",
                                           "pushing something, 1 frames later", "pushing something, 2 frames later"]
    generic, gindex = pretraining_prompts(InstructPretrainConfig(max_offset=2), None, 2)
    assert [generic[i] for i in gindex] == ["show this 1 frames later", "show this 2 frames later"] * 2
    with pytest.raises(ValueError, match="one action text per video"):
        pretraining_prompts(config, ["only one"], 3)
    with pytest.raises(ValueError, match="prompt must be one of"):
        InstructPretrainConfig(prompt="label")


def test_instruction_prompts_end_with_the_gap_so_the_fine_tuning_prompt_is_their_prefix(tmp_path):
    from pecn_ml.models.pix2pix import encode_prompts
    from pecn_ml.models.tiny import build_tiny_tokenizer, tiny_text_encoder
    from pecn_ml.prompts import build_prompt

    text = "pushing something from left to right"
    prompts, index = pretraining_prompts(InstructPretrainConfig(max_offset=2, prompt="instruction"), [text], 1)
    assert [prompts[i] for i in index] == [f"{build_prompt(text)}, 1 frames later", f"{build_prompt(text)}, 2 frames later"]
    # CLIP's text encoder is causal: the fine-tuning prompt's tokens embed exactly as in pretraining
    tok = build_tiny_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    encoder = tiny_text_encoder(tok).eval()
    n = len(tok(build_prompt(text)).input_ids) - 1                       # its tokens before end-of-text
    fine, pre = encode_prompts(tok, encoder, [build_prompt(text), prompts[1]])
    assert torch.equal(fine[:n], pre[:n]) and not torch.allclose(fine[n:], pre[n:])


def test_corpus_videos_join_the_unet_pretraining_and_key_the_folder(tmp_path):
    from pecn_ml.data.synthetic import SyntheticConfig

    corpus = SyntheticConfig.tiny(seed=7, templates=("Pushing something from left to right",
                                                     "Moving something up"),
                                  task_val_per_template=0, other_val_per_template=0, num_test=0,
                                  short_fraction=0.0, min_frames=26, max_frames=28, min_width=320, max_width=320)
    config = replace(TINY, instruct=replace(TINY.instruct, prompt="instruction"), corpus=corpus)
    videos = _videos()
    logs: list[str] = []
    built = build_standin_pix2pix(tmp_path, videos, config, "data-v1", texts=["moving something up"] * 4,
                                  log=logs.append)
    assert built.report["corpus_videos"] == 2 and built.report["instruct_videos"] == 6
    assert built.report["config"]["corpus"]["seed"] == 7
    assert built.path.name != f"instruct-pix2pix-{standin_key('pix2pix', replace(config, corpus=None), 'data-v1')}"
    assert not (built.path / "corpus").exists()                          # generated, used, removed
    assert any("stand-in corpus: 2 training videos at 32 px" in line for line in logs)


def test_clean_latent_standin_ships_a_ddim_sampler_that_starts_from_noise(tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

    config = replace(TINY, scheduler="ddim", prediction_type="sample",
                     instruct=replace(TINY.instruct, prompt="action"))
    videos = _videos()
    built = build_standin_pix2pix(tmp_path, videos, config, "data-v1",
                                  texts=["moving something up", "moving something down"] * 2)
    assert built.path.name != f"instruct-pix2pix-{standin_key('pix2pix', TINY, 'data-v1')}"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(built.path, safety_checker=None,
                                                                  requires_safety_checker=False)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "sample"
    assert pipe.scheduler.config.clip_sample is False     # clipping to [-1, 1] washes latents out
    pipe.scheduler.set_timesteps(1)
    assert pipe.scheduler.timesteps.tolist() == [999]     # one step starts from pure noise, not t = 0
    with pytest.raises(ValueError, match="one action text per video"):
        build_standin_pix2pix(tmp_path, videos, config, "data-v2")


def test_motion_masks_find_the_moving_square():
    video = _videos(1, size=32, frames=12)[0]
    masks = motion_masks(video, threshold=25)
    assert masks.shape == (12, 32, 32) and 0 < masks.mean() < 0.5
    stats = region_stats(torch.from_numpy(masks))
    assert stats[-1, 0] > stats[0, 0]                                    # it moves left to right
    one = torch.zeros(1, 10, 10)
    one[0, 2, 7] = 1
    assert region_stats(one)[0].tolist() == pytest.approx([7 / 9, 2 / 9, 0.1])


def test_pix2pix_standin_loads_like_the_hub_model_and_is_reused(tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    videos = _videos()
    held_out = np.stack([v[3] for v in _videos(2, seed=9)])
    logs: list[str] = []
    built = build_standin_pix2pix(tmp_path, videos, TINY, "data-v1", eval_frames=held_out, log=logs.append)
    assert not built.reused and built.path.name == f"instruct-pix2pix-{standin_key('pix2pix', TINY, 'data-v1')}"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(built.path, safety_checker=None,
                                                                  requires_safety_checker=False)
    assert pipe.unet.config.in_channels == 8
    assert pipe.vae.config.scaling_factor == pytest.approx(built.report["vae_scaling_factor"])
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)     # measured, not SD's
    assert {"roundtrip_psnr", "roundtrip_ssim", "autoencoder_loss", "instruct_loss"} <= set(built.report)
    assert built.report["data_version"] == "data-v1" and built.report["train_videos"] == 4
    card = read_card(built.path).data.to_dict()                       # a model card, written with the weights
    assert card["stands_in_for"] == "timbrooks/instruct-pix2pix" and card["data_versions"] == {"training_frames": "data-v1"}
    assert card["training_config"] == json.loads(json.dumps(TINY.part("pix2pix"))) and card["seed"] == TINY.seed
    assert card["loss_summary"]["instruct_loss"]["steps"] == TINY.instruct.steps and card["license"] == "other"
    again = build_standin_pix2pix(tmp_path, videos, TINY, "data-v1", log=logs.append)
    assert again.reused and again.path == built.path and again.weights_sha256 == built.weights_sha256
    assert any("reusing" in line for line in logs)
    other = build_standin_pix2pix(tmp_path, videos, TINY, "data-v2")       # new data: a new folder
    assert other.path != built.path and built.path.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_resnet_and_clip_text_standins(tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer, ResNetModel

    resnet = build_standin_resnet(tmp_path, _videos(), TINY, "data-v1")
    assert ResNetModel.from_pretrained(resnet.path).config.hidden_sizes == [16, 32]
    assert resnet.report["pretrain_loss"]["steps"] == 4
    assert read_card(resnet.path).data.loss_summary["pretrain_loss"]["steps"] == 4
    clip = build_standin_clip_text(tmp_path, TINY, run_id="run-7")   # copied from the shipped one: this run's card
    CLIPTextModel.from_pretrained(clip.path)
    assert read_card(clip.path).data.dagster_run_id == "run-7"
    assert CLIPTokenizer.from_pretrained(clip.path)("moving something up").input_ids
    assert standin_key("resnet", TINY, "a") != standin_key("resnet", replace(TINY, seed=1), "a")
    with pytest.raises(ValueError, match="no training videos"):
        build_standin_resnet(tmp_path, [], TINY, "x")


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_shipped_standin_is_copied_when_it_verifies_and_refused_when_a_byte_changed(tmp_path, monkeypatch):
    from pecn_ml.models import standins

    videos, shipped = _videos(), tmp_path / "shipped"
    built = build_standin_pix2pix(tmp_path / "a", videos, TINY, "data-v1", shipped=None)
    assert standins.main(["ship", str(tmp_path / "a"), "--dest", str(shipped)]) == 0
    entry = standins.read_manifest(shipped)[built.path.name]
    assert entry["weights_sha256"] == built.weights_sha256 and entry["data_version"] == "data-v1"
    assert set(entry["files"]) == set(_files(built.path)) and standins.verify_shipped(shipped) == {built.path.name: None}

    def no_training(*args, **kwargs):
        raise AssertionError("trained although verified shipped weights were there")

    logs: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(standins, "train_autoencoder", no_training)
        t0 = time.perf_counter()
        copied = build_standin_pix2pix(tmp_path / "b", videos, TINY, "data-v1", log=logs.append, shipped=shipped)
        assert time.perf_counter() - t0 < 5
    assert copied.reused and copied.report["source"] == "shipped" and copied.path == tmp_path / "b" / built.path.name
    assert copied.weights_sha256 == built.weights_sha256 and _files(copied.path) == _files(built.path)
    assert all((copied.path / f).read_bytes() == (built.path / f).read_bytes() for f in _files(built.path)
               if f != "README.md")                                  # the card is the copy's own
    assert read_card(copied.path).data.to_dict()["standin_source"] == "copied from the shipped stand-ins"
    assert any(f"shipped weights {built.path.name} (verified)" in line for line in logs), logs
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]

    weights = sorted((shipped / built.path.name).rglob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    logs.clear()
    rebuilt = build_standin_pix2pix(tmp_path / "c", videos, TINY, "data-v1", log=logs.append, shipped=shipped)
    assert not rebuilt.reused and "source" not in rebuilt.report
    assert any("WARNING" in line and str(weights) in line for line in logs), logs
    assert any("built" in line for line in logs)
    assert str(weights) in standins.verify_shipped(shipped)[built.path.name]
    assert standins.main(["verify", "--dest", str(shipped)]) == 1


def test_ship_command_latest_prune_and_missing_manifests(tmp_path):
    from pecn_ml.models import standins
    from pecn_ml.utils.files import sha256_file

    built, dest = tmp_path / "built", tmp_path / "shipped"
    first = build_standin_clip_text(built, TINY, shipped=tmp_path / "nowhere")        # no manifest: built
    (built / ".clip-text-0123456789abcdef.tmp-x").mkdir()                             # never shipped
    (built / "curves").mkdir()
    cmd = [sys.executable, "-m", "pecn_ml.models.standins", "ship", str(built), "--dest", str(dest)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((dest / "shipped.json").read_text(encoding="utf-8"))
    assert list(manifest) == [first.path.name]
    assert manifest[first.path.name]["files"] == {f: sha256_file(first.path / f) for f in _files(first.path)}
    assert manifest[first.path.name]["config"] == json.loads(json.dumps(TINY.part("clip_text")))
    again = build_standin_clip_text(tmp_path / "root", TINY, shipped=dest)
    assert again.report["source"] == "shipped" and again.weights_sha256 == first.weights_sha256

    second = build_standin_clip_text(built, replace(TINY, seed=1), shipped=None)
    later = (first.path / "standin.json").stat().st_mtime + 60
    os.utime(second.path / "standin.json", (later, later))                         # built last
    assert standins.main(["ship", str(built), "--dest", str(dest)]) == 0
    assert set(standins.read_manifest(dest)) == {first.path.name, second.path.name}
    assert standins.main(["ship", str(built), "--dest", str(dest), "--latest", "--prune"]) == 0
    assert set(standins.read_manifest(dest)) == {second.path.name} and not (dest / first.path.name).exists()
    assert standins.main(["ship", str(tmp_path / "empty"), "--dest", str(dest)]) == 1
    assert standins.main(["ship", str(built), "clip-text-0000000000000000", "--dest", str(dest)]) == 1

    logs: list[str] = []
    assert not build_standin_clip_text(tmp_path / "fresh", replace(TINY, seed=2), shipped=dest, log=logs.append).reused
    assert any("no shipped weights" in line and second.path.name in line for line in logs), logs
    (dest / "shipped.json").write_text("{}", encoding="utf-8")                        # empty: built
    assert not build_standin_clip_text(tmp_path / "fresh", TINY, shipped=dest).reused


def test_a_shipped_standin_without_a_card_gets_one_in_its_copy_and_old_folders_on_reuse(tmp_path):
    """Shipped folders of before the cards verify as they are; the copy gets a card (not a verified
    file, outside every weight sha), and so does a reused folder built before the cards."""
    from pecn_ml.models import standins

    built = build_standin_clip_text(tmp_path / "a", TINY, shipped=None)
    (built.path / "README.md").unlink()                                    # as built before the cards
    shipped = tmp_path / "shipped"
    assert standins.main(["ship", str(tmp_path / "a"), "--dest", str(shipped)]) == 0
    assert "README.md" not in standins.read_manifest(shipped)[built.path.name]["files"]
    copied = build_standin_clip_text(tmp_path / "b", TINY, shipped=shipped, run_id="run-3")
    assert copied.report["source"] == "shipped" and copied.weights_sha256 == built.weights_sha256
    card = read_card(copied.path).data
    assert card.dagster_run_id == "run-3" and card.standin_source == "copied from the shipped stand-ins"
    assert standins.verify_shipped(shipped) == {built.path.name: None}
    assert not (shipped / built.path.name / "README.md").exists()          # the shipped folder is untouched
    logs: list[str] = []
    again = build_standin_clip_text(tmp_path / "a", TINY, shipped=None, log=logs.append)
    assert again.reused and again.weights_sha256 == built.weights_sha256 and read_card(again.path).data.seed == TINY.seed
    assert any("added the missing model card" in line for line in logs)


def test_ship_leaves_the_stand_ins_it_already_ships_untouched(tmp_path):
    """`ship --latest` after a demo that copied its stand-ins from the shipped folder must not
    rewrite their cards (the copy's card names the demo's run); only new folders are written."""
    from pecn_ml.models import standins

    dest = tmp_path / "shipped"
    first = build_standin_clip_text(tmp_path / "a", TINY, shipped=None)
    assert standins.main(["ship", str(tmp_path / "a"), "--dest", str(dest)]) == 0
    before = {f: (dest / first.path.name / f).read_bytes() for f in _files(dest / first.path.name)}
    entry = standins.read_manifest(dest)[first.path.name]
    copied = build_standin_clip_text(tmp_path / "b", TINY, shipped=dest, run_id="demo-run")
    assert copied.report["source"] == "shipped"
    other = build_standin_clip_text(tmp_path / "b", replace(TINY, seed=5), shipped=None)
    assert standins.main(["ship", str(tmp_path / "b"), "--dest", str(dest), "--prune"]) == 0
    after = {f: (dest / first.path.name / f).read_bytes() for f in _files(dest / first.path.name)}
    assert after == before and standins.read_manifest(dest)[first.path.name] == entry
    assert set(standins.read_manifest(dest)) == {first.path.name, other.path.name}
    assert standins.verify_shipped(dest) == {first.path.name: None, other.path.name: None}


def test_the_packages_shipped_standins_verify():
    from pecn_ml.models import standins

    assert (standins.SHIPPED / standins.MANIFEST).is_file()
    assert {name: p for name, p in standins.verify_shipped().items() if p} == {}


def test_every_shipped_file_stays_under_2_mb():
    """The stand-ins travel in git: no file of theirs may outgrow 2 MB (the demo's UNet is saved in
    float16 for that, `StandinConfig.unet_dtype`)."""
    from pecn_ml.models import standins

    sizes = {str(p.relative_to(standins.SHIPPED)): p.stat().st_size
             for p in standins.SHIPPED.rglob("*") if p.is_file()}
    assert sizes and {name: n for name, n in sizes.items() if n > 2 * 1024 * 1024} == {}


def test_a_float16_unet_is_saved_half_size_and_loads_as_float32(tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from safetensors import safe_open

    videos = _videos()
    wide = replace(TINY, unet_channels=(32, 32))
    half = replace(wide, unet_dtype="float16")
    assert standin_key("pix2pix", half, "d") != standin_key("pix2pix", wide, "d")
    built = {c.unet_dtype: build_standin_pix2pix(tmp_path, videos, c, "d", shipped=None) for c in (wide, half)}
    files = {k: b.path / "unet" / "diffusion_pytorch_model.safetensors" for k, b in built.items()}
    with safe_open(str(files["float16"]), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert files["float16"].stat().st_size < 0.6 * files["float32"].stat().st_size
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(built["float16"].path, safety_checker=None,
                                                                  requires_safety_checker=False)
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}   # trains and samples in fp32
    with pytest.raises(ValueError, match="unet_dtype"):
        replace(TINY, unet_dtype="int8")


def test_plain_gap_pairs_are_told_the_seeds_prompt_and_progress_pairs_their_true_percent():
    from pecn_ml.prompts import build_prompt
    from pecn_ml.training.instruct_pretrain import draw_pairs, instruction_prompt, progress_prompt

    text = "pushing something from left to right"
    config = InstructPretrainConfig(max_offset=2, batch_size=64, prompt="instruction", plain_gap=2, progress_prob=1.0)
    prompts, index = pretraining_prompts(config, [text], 1)
    assert [prompts[i] for i in index] == [f"{build_prompt(text)}, 1 frames later", build_prompt(text)]
    assert instruction_prompt(text, 2, 2, 57) == build_prompt(text, 57)
    assert instruction_prompt(text, 1, 2, 57) == f"{build_prompt(text, 57)}, 1 frames later"
    # every pair told (progress_prob 1), with its input frame's percent within its own video
    lat = encode_videos(tiny_vae(), _videos(2, frames=6), max_offset=2)
    pick, told = draw_pairs(lat, config, torch.Generator().manual_seed(0), None)
    assert told.all() and {int(v) for v in pick[:, 3]} == {0, 1}
    for i, _, k, v in pick.tolist():
        assert progress_prompt(torch.tensor([i, 0, k, v]), lat, [text, "other"], config) == \
            instruction_prompt([text, "other"][v], k, 2, int((i - 6 * v) / 6 * 100))
    _, told = draw_pairs(lat, replace(config, progress_prob=1e-9), torch.Generator().manual_seed(0), None)
    assert not told.any()
    with pytest.raises(ValueError, match="plain_gap"):
        InstructPretrainConfig(max_offset=2, prompt="instruction", plain_gap=3)
    with pytest.raises(ValueError, match="need prompt='instruction'"):
        InstructPretrainConfig(prompt="action", progress_prob=0.5)


def test_progress_frame_draws_every_told_pair_from_that_input_frame_and_the_rest_from_all():
    from pecn_ml.training.instruct_pretrain import draw_pairs, progress_pool

    lat = encode_videos(tiny_vae(), _videos(3, frames=8), max_offset=3)
    config = InstructPretrainConfig(max_offset=3, batch_size=256, prompt="instruction", progress_prob=0.5,
                                    progress_frame=4)
    pool = progress_pool(lat, config)
    assert len(pool) == 3 * 3                                     # 3 videos x k in 1..3 from frame 4
    pick, told = draw_pairs(lat, config, torch.Generator().manual_seed(0), pool)
    start = lat.starts[pick[:, 3]]
    assert 0.35 < told.float().mean() < 0.65
    assert torch.all(pick[told, 0] - start[told] == 4)
    assert torch.all(pick[told, 1] - pick[told, 0] == pick[told, 2])
    assert len({int(x) for x in pick[~told, 0] - start[~told]}) > 3   # the others start anywhere
    assert progress_pool(lat, replace(config, progress_frame=None)) is None
    with pytest.raises(ValueError, match="progress_frame 8 is the input of no pair"):
        progress_pool(lat, replace(config, progress_frame=8))
    with pytest.raises(ValueError, match="progress_frame"):
        InstructPretrainConfig(prompt="instruction", progress_frame=4)        # nothing told
    with pytest.raises(ValueError, match="progress_frame"):
        InstructPretrainConfig(prompt="instruction", progress_prob=0.5, progress_frame=-1)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_pretraining_trains_the_text_encoder_only_when_told(tmp_path, train_text_encoder):
    from diffusers import DDPMScheduler

    from pecn_ml.models.tiny import build_tiny_tokenizer, ip2p_scheduler, tiny_text_encoder, tiny_unet
    from pecn_ml.training.instruct_pretrain import pretrain_instruct_unet

    torch.manual_seed(0)
    tok = build_tiny_tokenizer(tmp_path / "tok")
    encoder, unet, vae = tiny_text_encoder(tok), tiny_unet(8, (32, 32)), tiny_vae()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    config = InstructPretrainConfig(steps=3, batch_size=4, max_offset=2, prompt="instruction", plain_gap=2,
                                    progress_prob=0.5, progress_frame=3, train_text_encoder=train_text_encoder)
    noise = DDPMScheduler.from_config(ip2p_scheduler("ddim", "sample").config)
    losses = pretrain_instruct_unet(unet, vae, tok, encoder, noise, _videos(2, frames=6), config,
                                    texts=["pushing something", "pulling something"])
    assert len(losses) == 3 and all(np.isfinite(losses))
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    if train_text_encoder:
        assert "embeddings.token_embedding.weight" in changed and len(changed) > 10
    else:
        assert changed == []
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
