"""The one documented place where the demo and the real run differ.

Two profiles, one code path:

| setting              | `demo` (CPU, minutes)                   | `full` (the seed's experiment, GPU)      |
|----------------------|-----------------------------------------|------------------------------------------|
| data                 | synthetic SSv2, generated locally       | real SSv2 under `data/sthv2`             |
| pretrained weights   | small stand-ins trained on the synthetic training videos (`models/standins.py`) | timbrooks/instruct-pix2pix, microsoft/resnet-50, openai/clip-vit-base-patch32, pinned to a hub commit |
| sampling per task    | all of the small synthetic set          | 2,000 train / 100 validation, seed 42    |
| frame caches         | 96 px (the only size its models read)   | 96, 128 and 224 px                       |
| PAC-Net / IP2P input | 96 px frame cache                       | 224 px frame cache                       |
| training length      | a few epochs                            | the seed's table (30 / 40 epochs)        |
| PAC-Net epoch picked on | 10 % of each task's training videos (24) | 5 % (~400); eval videos only score it |
| evaluation           | few samples, few denoising steps        | 100 samples, 25 steps, guidance 1.5      |
| without a GPU        | runs on the CPU                         | GPU steps fail at once (PECN_ALLOW_CPU=1 allows the CPU) |

A third, `rehearsal` (`make rehearse`, `pecn_assets/rehearse.py`), is `full` with only the sizes of
the *run* made small: the real architectures (random weights, built locally by
`pecn_ml.rehearsal` and passed where the hub names would be), the real resolution (224 px), the
real hyper-parameters and precision, but a handful of synthetic videos, a couple of optimizer
steps per model and two samples per evaluation (`rehearsal_profile` lists every difference).

Pick one with the environment variable `PECN_PROFILE` (default `demo`; the test suite also uses
`smoke`, the demo made smaller still; `rehearsal` needs the local models of `make rehearse` in
place of the hub names); override the data
folder with `PECN_DATA_DIR`. Nothing else changes between them: the same assets call the
same functions with these configs.
"""

from __future__ import annotations

import os
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

    def resolve_data_dir(self) -> str:
        return os.environ.get("PECN_DATA_DIR") or self.data_dir


def demo_profile() -> Profile:
    """Synthetic data, tiny models, CPU: the whole graph in about ten minutes on 2 cores.

    The demo-only choices that let its small models predict motion rather than copy frame 20
    (issue 16; every configuration tried, with its numbers, is in docs/demo_experiments.md):
    """
    return Profile(
        name="demo",
        data_dir="data/synthetic_sthv2",
        outputs_dir="outputs/demo",
        results_dir="test_result/demo",
        # Scenes a 4x-downsampling VAE of ~0.3 M parameters can reproduce, and motion it can see:
        # flat walls, tables and objects (texture 0; with SSv2-like textures the stand-in VAE blurred
        # them away, so copying frame 20 through it lost more than the object's motion was worth),
        # objects and hand 1.5x as large, and videos of at most 40 frames (64 in SSv2), so five
        # frames are >= 1/8 of the action. Every video of a template moves its object the same
        # distance with the same speed profile and timing (motion_spread 0; directions and sides
        # stay random): what is left to guess at frame 20 is meant to be the video's length, i.e.
        # the speed, which the progress prompt gives away (the known answer). Measured within a
        # template, the percent predicts the displacement from frame 20 to 25 by 2-6 px (at 96 px)
        # for rolling back, throwing, dropping and covering, by < 1.5 px for translations and
        # placings (their eased timing cancels most of the 1 / T; row 24).
        # With the full ranges the mean prediction of a small model was a blur that lost to
        # copying (docs/demo_experiments.md).
        # Six validation videos per task template (SyntheticConfig.demo's 3 gave a basic set of 42
        # and 6 back-and-forth videos: paired effects of 0.005 SSIM came out at p 0.02-0.04 there and
        # at p < 1e-4 on the held-out seed, docs/demo_experiments.md row 23); the training videos stay 240.
        synthetic=SyntheticConfig.demo(texture=0.0, object_scale=1.5, max_frames=40, motion_spread=0.0,
                                       task_val_per_template=6),
        standins=replace(
            StandinConfig.demo(),
            # the VAE on 64 px crops (32 px: its GroupNorm statistics differ from a whole frame's;
            # round trip 22.8 -> 27.1 dB on these frames at the same step count)
            autoencoder=AutoencoderTrainConfig(steps=1100, batch_size=16, crop=64),
            # the UNet is pretrained on every frame pair of the training videos and of a corpus of
            # its own (2,400 more synthetic videos of the four tasks, generator seed 7: neither the
            # demo's seed 0 nor benchmarks/bench_heldout_seed.py's 1), told the seed's instruction
            # for the action and the gap ("Generate a future frame of this action: pushing
            # something from left to right, 3 frames later"), as an editing model that has seen
            # motion described in words; the fine-tuning prompts are that prompt's prefix. On the
            # 240 training videos alone it learned them by heart and gained nothing on the
            # validation videos (docs/demo_experiments.md, rows 8-10). Progress is never in these
            # prompts. Timesteps >= 900 only: the demo samples in one step from t = 999 (row 13).
            # Its targets are the target frames' posterior means (target_latents "mode"), as in the
            # fine-tuning below.
            # The UNet's clean latents are the *change* from frame 20's latents (latent_target
            # "change", recorded in the stand-in's folder; its fine-tunings and the sampler follow),
            # its last layer starting at zero: a model that predicts no change is latent copy
            # exactly, so the unchanged parts need not be rebuilt through a 0.8 M UNet (which cost the
            # "frame" stand-in 0.8 dB outside the motion region, docs/demo_experiments.md rows 18-22).
            # The pairs five frames apart are told the seed's instruction verbatim (plain_gap 5), the
            # prompt next5's variants fine-tune on: told the ", 5 frames later" form, the stand-in
            # gained 0.0087 SSIM over latent copy on basic next5, told the seed's prompt only 0.0023
            # (row 22). Half of the pairs also carry the seed's progress sentence with their input
            # frame's true percent (progress_prob 0.5): in these videos the percent gives away the
            # speed, and a stand-in that never saw a percentage learned to read it from 240
            # fine-tuning pairs no better than from a shuffled one (progress - shuffled +0.12 dB,
            # p 0.34, row 22). It stands in for a pretrained model that reads numbers; the control
            # arms measure whether the fine-tuned variants use them. The told pairs all start at the
            # seed's input frame 20 (progress_frame): the percent of an arbitrary frame says how much
            # of the path is left, not the speed, and a stand-in told it there read the percent no
            # better than a shuffled one (+0.04 dB, p 0.21, row 23). The text encoder learns with
            # the UNet (the real CLIP arrives pretrained; the random stand-in embedded prompts that
            # differ in a direction word or a digit almost alike, row 6) and is saved with it;
            # fine-tuning keeps it frozen, as the seed does.
            instruct=InstructPretrainConfig(steps=4000, batch_size=32, learning_rate=1e-3, prompt="instruction",
                                            min_timestep=DEMO_MIN_TIMESTEP, target_latents="mode",
                                            latent_target="change", plain_gap=5, progress_prob=0.5,
                                            progress_frame=SamplingConfig().input_idx, train_text_encoder=True),
            corpus=SyntheticConfig.demo(seed=7, texture=0.0, object_scale=1.5, max_frames=40, motion_spread=0.0,
                                        task_train_per_template=100, task_val_per_template=0,
                                        other_train_per_template=0, other_val_per_template=0,
                                        num_other_templates=0, num_test=0),
            # the UNet predicts the clean latents ("sample") and the pipeline samples with DDIM
            # (no clipping, trailing steps); SD's and timbrooks' noise prediction with Euler
            # ancestral needs far more training than a CPU demo has to stop adding noise
            scheduler="ddim", prediction_type="sample",
            # a UNet of 0.8 M parameters (48, 48 channels), its weights saved in float16 (1.5 MB:
            # every file the package ships stays under 2 MB; 64, 64 channels, 1.4 M parameters,
            # made a 5.7 MB float32 file and reproduced the unchanged parts of frame 20 no better
            # than 0.36 M at 32, 32: ~36 dB against latent copy, docs/demo_experiments.md row 18)
            unet_channels=(48, 48), unet_dtype="float16"),
        filter=FilterConfig(),
        pacnet_resolution=96,
        pix2pix_resolution=96,
        # PAC-Net picks its best epoch on a selection split of 10 % of each task's training videos
        # (24 of the 240: 9 move, 7 drop, 5 cover, 3 back-and-forth; seeded) and trains on the other
        # 216, so the evaluation videos (72) only score it. 10 %, not more: PAC-Net needs most of the
        # 240 (with 144 its MAE stayed above half the mean predictor's, SyntheticConfig.demo); not
        # less: with fewer than 24 (3 back-and-forth videos) one video's crop would sway the choice.
        # Measured at e608f88's demo data with the shipped stand-ins (regression head, 40 epochs, 1
        # CPU thread): test MAE 11.52 pp on the 72 evaluation videos vs the mean predictor's 20.44
        # (epoch 22 picked by the 24 selection videos, 12.09 pp there); trained on all 240 and picked
        # on the evaluation videos themselves, as before: 10.58 vs 20.45 (a score the choice leaked into).
        pacnet_train=PacNetTrainConfig.demo(selection_fraction=0.1),
        # fine-tuning at lr 3e-4 (1e-3 undid what the pretraining learned: row 11) and, like the
        # pretraining, on the timesteps the one-step sampler uses
        # its targets are the target frames' posterior means ("mode"): the stand-in VAE's posterior
        # noise (std 0.17 against latents of std 1.25) is noise in exactly what a model must
        # reproduce to beat copying (the seed's and diffusers' script take a posterior sample)
        pix2pix_train=Pix2PixTrainConfig.demo(learning_rate=3e-4, min_timestep=DEMO_MIN_TIMESTEP,
                                              target_latents="mode"),
        # one DDIM step from pure noise: the model's estimate of the clean latents (its mean
        # prediction), without text/image guidance (guidance 1.0: one UNet pass, not three);
        # more steps add sampling noise that a small model cannot make consistent
        # 75 basic videos, 25 per task (every eligible cover_object video: the basic set has 108 with
        # frame 25, 25 of them covers; 24 let the draw sway the result by ~1 dB, row 19) and the 14
        # back-and-forth videos with frame 25
        # The prediction is decoded only where the model predicts a change (latent norm >= 0.2, grown
        # by 4 px), latent copy elsewhere: the stand-in VAE's decoder (mid-block attention, GroupNorm)
        # spreads a local latent edit over the whole frame, which cost the fine-tuned next5 about
        # 0.004 SSIM far from the motion (row 22; thresholds 0.1-0.5 measured alike).
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
    return replace(
        demo,
        name="smoke",
        data_dir="data/smoke_sthv2",
        outputs_dir="outputs/smoke",
        results_dir="test_result/smoke",
        # the demo's scenes, sampler and pretraining prompts at the tiny sizes
        synthetic=SyntheticConfig.tiny(texture=demo.synthetic.texture, object_scale=demo.synthetic.object_scale,
                                       max_frames=demo.synthetic.max_frames,
                                       motion_spread=demo.synthetic.motion_spread),
        standins=replace(StandinConfig.smoke(), scheduler=demo.standins.scheduler,
                         prediction_type=demo.standins.prediction_type, unet_dtype=demo.standins.unet_dtype,
                         instruct=replace(StandinConfig.smoke().instruct, prompt=demo.standins.instruct.prompt,
                                          min_timestep=demo.standins.instruct.min_timestep,
                                          target_latents=demo.standins.instruct.target_latents,
                                          latent_target=demo.standins.instruct.latent_target,
                                          plain_gap=demo.standins.instruct.plain_gap,
                                          progress_prob=demo.standins.instruct.progress_prob,
                                          progress_frame=demo.standins.instruct.progress_frame,
                                          train_text_encoder=demo.standins.instruct.train_text_encoder)),
        # (no stand-in corpus: tests/pecn_ml/models/test_standins.py builds one at tiny size)
        pacnet_train=PacNetTrainConfig.demo(epochs=1, selection_fraction=demo.pacnet_train.selection_fraction),
        pix2pix_train=Pix2PixTrainConfig.demo(num_train_epochs=1, max_train_steps=2, validation_epochs=1,
                                              num_validation_samples=1, validation_inference_steps=2,
                                              learning_rate=demo.pix2pix_train.learning_rate,
                                              min_timestep=demo.pix2pix_train.min_timestep,
                                              target_latents=demo.pix2pix_train.target_latents),
        sampling=replace(demo.sampling, num_samples=2, batch_size=2),
        resolutions=RESOLUTIONS,  # the tests cover every resolution partition of the real run
    )


def rehearsal_profile() -> Profile:
    """The real run's code path and model sizes on a handful of synthetic videos (`make rehearse`).

    `full` with the sizes of the *run* changed, never of the models: every field not set here is
    the full profile's (models, 224 px, learning rates, schedules, precision, batch sizes, guidance,
    seeds). The pretrained weights are the full-size random folders of `pecn_ml.rehearsal`, given
    to the definitions as `PretrainedModels` (the hub names stay the full profile's). A machine
    without CUDA lowers batch sizes on top of this (`pecn_assets.rehearse.cpu_adjustments`, printed).
    """
    full = full_profile()
    one_template_per_task = tuple(keys[0] for keys in full.filter.task_map.values())
    return replace(
        full,
        name="rehearsal",
        # throwaway folders of their own, never the real run's data/sthv2, outputs/, test_result/
        data_dir="data/rehearsal_sthv2",
        outputs_dir="outputs/rehearsal",
        results_dir="test_result/rehearsal",
        # a handful of synthetic videos at SSv2's frame size (240 px high, 320-427 wide, as the
        # synthetic writer always renders): one template per task, 4 training and 2 validation
        # videos each (16 train, 6 basic + 2 back-and-forth validation), 1 test id; no short
        # videos, so every evaluation finds its two samples with frame 25
        synthetic=SyntheticConfig.tiny(templates=one_template_per_task, task_train_per_template=4,
                                       task_val_per_template=2, num_test=1, short_fraction=0.0,
                                       min_frames=26, max_frames=48),
        # sampling keeps all of them (full: 2,000 train / 100 validation per task)
        filter=replace(full.filter, train_per_task=4, val_per_task=2),
        # frame caches at 224 px only, the size both models read (full: 96, 128 and 224; the other
        # two are the same code at smaller sizes and would only cost time)
        resolutions=(224,),
        # two optimizer steps per variant (full: 40 epochs); one checkpoint (after step 1) so the
        # full-size optimizer state is written once; validation after the one epoch with one
        # sample and two denoising steps (full: every 10 epochs, 2 samples, 20 steps)
        pix2pix_train=replace(full.pix2pix_train, max_train_steps=2, checkpointing_steps=1,
                              validation_epochs=1, num_validation_samples=1,
                              validation_inference_steps=2),
        # one epoch over at most 16 training videos = two steps of the full batch of 8 (full: 30
        # epochs over every training video; here the 12 left after the selection split, one video
        # per task: 8 + 4), the epoch picked on at most 4 selection videos
        pacnet_train=replace(full.pacnet_train, epochs=1, max_train_videos=16, max_val_videos=4),
        # two samples per eval set, 4 denoising steps (full: 100 samples, 25 steps); guidance,
        # seed and frames are the full profile's
        sampling=replace(full.sampling, num_samples=2, num_inference_steps=4),
    )


PROFILES = {"demo": demo_profile, "full": full_profile, "smoke": smoke_profile, "rehearsal": rehearsal_profile}


def get_profile(name: str | None = None) -> Profile:
    """The profile named `name`, or by `PECN_PROFILE` (default `demo`)."""
    name = name or os.environ.get("PECN_PROFILE", "demo")
    if name not in PROFILES:
        raise ValueError(f"unknown PECN profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]()
