"""The full profile is the seed's experiment; demo and smoke differ only in settings."""

import pytest

from pecn_ml.profiles import CLIP_NAME, PIX2PIX_BASE, RESNET_NAME, get_profile


def test_full_profile_matches_the_seed_tables():
    full = get_profile("full")
    assert full.data_dir == "data/sthv2" and full.standins is None and full.synthetic is None
    assert full.prompt_text == "class"  # the seed's example prompts use the class text
    assert (full.filter.train_per_task, full.filter.val_per_task, full.filter.seed) == (2000, 100, 42)
    t = full.pix2pix_train
    assert (full.pix2pix_resolution, t.resolution, t.train_batch_size, t.gradient_accumulation_steps,
            t.learning_rate, t.num_train_epochs, t.validation_epochs, t.mixed_precision) == \
        (224, 224, 4, 4, 5e-6, 40, 10, "fp16")
    p = full.pacnet_train
    assert (p.epochs, p.batch_size, p.lr, p.weight_decay, p.backbone_lr_mult) == (30, 8, 5e-5, 5e-5, 0.2)
    s = full.sampling
    assert (s.input_idx, s.num_samples, s.num_inference_steps, s.image_guidance_scale, s.seed) == \
        (20, 100, 25, 1.5, 42)
    assert PIX2PIX_BASE == "timbrooks/instruct-pix2pix"
    assert (RESNET_NAME, CLIP_NAME) == ("microsoft/resnet-50", "openai/clip-vit-base-patch32")


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_small_profiles_train_standins_on_synthetic_data(name):
    profile = get_profile(name)
    assert profile.standins is not None and profile.synthetic is not None
    assert profile.pix2pix_resolution in profile.resolutions and profile.pacnet_resolution in profile.resolutions


def test_smoke_covers_every_resolution_of_the_real_run():
    assert get_profile("smoke").resolutions == get_profile("full").resolutions


def test_profile_by_name():
    from pecn_ml.deployment import Deployment

    assert get_profile(Deployment.from_env({"PECN_PROFILE": "full"}).profile).name == "full"
    with pytest.raises(ValueError, match="unknown PECN profile 'nope'"):
        get_profile("nope")
