"""The one place where the demo and the real run differ: `demo` (synthetic data, stand-in models,
CPU, minutes), `full` (the seed's experiment: real SSv2, hub weights, GPU), `smoke` (the demo made
smaller, for the tests) and `rehearsal` (`full` with only the run made small). The table of
differences is in docs/OPERATIONS.md; the same assets call the same functions with these configs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from pecn_ml.data.annotations import FilterConfig
from pecn_ml.data.synthetic import SyntheticConfig
from pecn_ml.models.standins import StandinConfig
from pecn_ml.training.autoencoder import AutoencoderTrainConfig
from pecn_ml.training.instruct_pretrain import InstructPretrainConfig
from pecn_ml.sampling import SamplingConfig
from pecn_ml.training.pacnet import PacNetTrainConfig
from pecn_ml.training.pix2pix import Pix2PixTrainConfig

# Real pretrained weights (loaded with from_pretrained, as a user with internet would).
PIX2PIX_BASE = "timbrooks/instruct-pix2pix"
RESNET_NAME = "microsoft/resnet-50"
CLIP_NAME = "openai/clip-vit-base-patch32"

RESOLUTIONS = (96, 128, 224)
DEMO_MIN_TIMESTEP = 900   # the demo's models train on timesteps [900, 1000): it samples at 999 only


@dataclass(frozen=True)
class Profile:
    """Everything that differs between the demo and the real experiment."""

    name: str
    data_dir: str                       # SSv2 layout: annotations/, videos/, frames_RxR/
    outputs_dir: str                    # trained models (the seed's outputs/)
    results_dir: str                    # evaluations (the seed's test_result/)
    synthetic: Optional[SyntheticConfig]  # demo: the data is generated before the graph runs
    standins: Optional[StandinConfig]   # demo: train stand-ins for the pretrained weights; None: hub
    filter: FilterConfig
    pacnet_resolution: int
    pix2pix_resolution: int
    pacnet_train: PacNetTrainConfig
    pix2pix_train: Pix2PixTrainConfig
    sampling: SamplingConfig
    resolutions: tuple[int, ...] = field(default=RESOLUTIONS)
    prompt_text: str = "class"          # action text in prompts: "class" (seed's examples) or "label"
    requires_gpu: bool = False          # GPU steps fail at once without CUDA (unless settings.allow_cpu)


def demo_profile() -> Profile:
    """Synthetic data, tiny models, CPU: the whole graph in about ten minutes on 2 cores. Its
    choices let small models predict motion rather than copy frame 20 (issue 16; every
    configuration tried, with its numbers, is in docs/demo_experiments.md, rows cited below)."""
    # Scenes a ~0.3 M-parameter VAE can reproduce and motion it can see: flat textures, objects 1.5x,
    # videos <= 40 frames, one motion per template (motion_spread 0), so what is left to guess at
    # frame 20 is the speed, which the progress prompt gives away (row 24); 6 validation videos per
    # template, so paired effects of 0.005 SSIM are measurable (row 23).
    scenes = dict(texture=0.0, object_scale=1.5, max_frames=40, motion_spread=0.0)
    return Profile(
        name="demo",
        data_dir="data/synthetic_sthv2",
        outputs_dir="outputs/demo",
        results_dir="test_result/demo",
        synthetic=SyntheticConfig.demo(**scenes, task_val_per_template=6),
        standins=replace(
            StandinConfig.demo(),
            # the VAE on 64 px crops (32 px: GroupNorm statistics unlike a whole frame's; 22.8 -> 27.1 dB)
            autoencoder=AutoencoderTrainConfig(steps=1100, batch_size=16, crop=64),
            # The UNet is pretrained on every frame pair of the training videos and of its own corpus
            # (seed 7), told the seed's instruction for the action and gap (rows 8-10), on timesteps
            # >= 900 (the demo samples once at t = 999, row 13), towards the targets' posterior means,
            # predicting the *change* from frame 20's latents (a zero last layer is latent copy, rows
            # 18-22); plain_gap 5 is next5's prompt (row 22); half the pairs carry the true percent of
            # frame 20 (rows 22-23); the text encoder trains with it (row 6), frozen when fine-tuning.
            instruct=InstructPretrainConfig(steps=4000, batch_size=32, learning_rate=1e-3, prompt="instruction",
                                            min_timestep=DEMO_MIN_TIMESTEP, target_latents="mode",
                                            latent_target="change", plain_gap=5, progress_prob=0.5,
                                            progress_frame=SamplingConfig().input_idx, train_text_encoder=True),
            corpus=SyntheticConfig.demo(seed=7, **scenes, task_train_per_template=100, task_val_per_template=0,
                                        other_train_per_template=0, other_val_per_template=0,
                                        num_other_templates=0, num_test=0),
            # clean-latent prediction with DDIM: noise prediction needs more training than a CPU has
            scheduler="ddim", prediction_type="sample",
            # 0.8 M parameters saved in float16 (1.5 MB: every shipped file stays under 2 MB; row 18)
            unet_channels=(48, 48), unet_dtype="float16"),
        filter=FilterConfig(),
        pacnet_resolution=96,
        pix2pix_resolution=96,
        # the best epoch is picked on 10 % of each task's training videos (24 of 240), so the 72
        # evaluation videos only score it (test MAE 11.52 pp vs the mean predictor's 20.44)
        pacnet_train=PacNetTrainConfig.demo(selection_fraction=0.1),
        # lr 3e-4 (1e-3 undid the pretraining, row 11), the sampler's timesteps, posterior means
        pix2pix_train=Pix2PixTrainConfig.demo(learning_rate=3e-4, min_timestep=DEMO_MIN_TIMESTEP,
                                              target_latents="mode"),
        # one DDIM step without guidance; 75 basic videos (25 per task, row 19); decoded only where the
        # model predicts a change, latent copy elsewhere (the VAE spreads local edits, row 22)
        sampling=SamplingConfig.demo(num_inference_steps=1, guidance_scale=1.0, image_guidance_scale=1.0,
                                     num_samples=75, change_threshold=0.2, change_dilate=4),
        resolutions=(96,),
    )


def full_profile() -> Profile:
    """The seed's experiment: real SSv2, pretrained weights, the seed's hyper-parameters."""
    return Profile(
        name="full",
        data_dir="data/sthv2",
        outputs_dir="outputs",
        results_dir="test_result",
        synthetic=None,
        standins=None,
        filter=FilterConfig(),
        pacnet_resolution=224,
        pix2pix_resolution=224,
        # the seed's table; its best epoch is picked on a selection split of 5 % of each task's
        # training videos (~400 of 7,962: the size of the seed's validation set, which it used)
        pacnet_train=PacNetTrainConfig(selection_fraction=0.05),
        pix2pix_train=Pix2PixTrainConfig(),
        sampling=SamplingConfig(),
        requires_gpu=True,
    )


def smoke_profile() -> Profile:
    """The test suite's profile: the demo's code path on the tiny synthetic set, minimal lengths."""
    demo = demo_profile()

    def of(config, *names: str) -> dict:
        return {n: getattr(config, n) for n in names}

    # the demo's scenes, sampler and pretraining prompts at the tiny sizes
    instruct = replace(StandinConfig.smoke().instruct, **of(
        demo.standins.instruct, "prompt", "min_timestep", "target_latents", "latent_target", "plain_gap",
        "progress_prob", "progress_frame", "train_text_encoder"))
    return replace(
        demo,
        name="smoke",
        data_dir="data/smoke_sthv2",
        outputs_dir="outputs/smoke",
        results_dir="test_result/smoke",
        synthetic=SyntheticConfig.tiny(**of(demo.synthetic, "texture", "object_scale", "max_frames", "motion_spread")),
        standins=replace(StandinConfig.smoke(), **of(demo.standins, "scheduler", "prediction_type", "unet_dtype"),
                         instruct=instruct),
        # (no stand-in corpus: tests/pecn_ml/models/test_standins.py builds one at tiny size)
        pacnet_train=PacNetTrainConfig.demo(epochs=1, selection_fraction=demo.pacnet_train.selection_fraction),
        pix2pix_train=Pix2PixTrainConfig.demo(num_train_epochs=1, max_train_steps=2, validation_epochs=1,
                                              num_validation_samples=1, validation_inference_steps=2,
                                              **of(demo.pix2pix_train, "learning_rate", "min_timestep",
                                                   "target_latents")),
        sampling=replace(demo.sampling, num_samples=2, batch_size=2),
        resolutions=RESOLUTIONS,  # the tests cover every resolution partition of the real run
    )


def rehearsal_profile() -> Profile:
    """The real run's code path and model sizes on a handful of synthetic videos (`make rehearse`):
    `full` with the sizes of the *run* changed, never of the models (their weights: the random
    full-size folders of `pecn_ml.rehearsal`)."""
    full = full_profile()
    one_template_per_task = tuple(keys[0] for keys in full.filter.task_map.values())
    return replace(
        full,
        name="rehearsal",
        # throwaway folders of their own, never the real run's data/sthv2, outputs/, test_result/
        data_dir="data/rehearsal_sthv2",
        outputs_dir="outputs/rehearsal",
        results_dir="test_result/rehearsal",
        # SSv2-sized synthetic videos, one template per task, 4 training and 2 validation videos
        # each, none short (every evaluation finds its two samples with frame 25)
        synthetic=SyntheticConfig.tiny(templates=one_template_per_task, task_train_per_template=4,
                                       task_val_per_template=2, num_test=1, short_fraction=0.0,
                                       min_frames=26, max_frames=48),
        # sampling keeps all of them (full: 2,000 train / 100 validation per task)
        filter=replace(full.filter, train_per_task=4, val_per_task=2),
        # frame caches at 224 px only, the size both models read
        resolutions=(224,),
        # two optimizer steps, one checkpoint (the full-size optimizer state written once), one
        # validation sample of two denoising steps
        pix2pix_train=replace(full.pix2pix_train, max_train_steps=2, checkpointing_steps=1,
                              validation_epochs=1, num_validation_samples=1,
                              validation_inference_steps=2),
        # one epoch of two full batches, the epoch picked on at most 4 selection videos
        pacnet_train=replace(full.pacnet_train, epochs=1, max_train_videos=16, max_val_videos=4),
        # two samples per eval set, 4 denoising steps
        sampling=replace(full.sampling, num_samples=2, num_inference_steps=4),
    )


PROFILES = {"demo": demo_profile, "full": full_profile, "smoke": smoke_profile, "rehearsal": rehearsal_profile}


def get_profile(name: str) -> Profile:
    """The profile named `name`."""
    if name not in PROFILES:
        raise ValueError(f"unknown PECN profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]()
