"""Stand-ins for the pretrained weights, trained on the synthetic domain (demo and tests).

The real run starts from pretrained weights; the demo cannot download them, and random weights
would make every downstream number noise. So the demo builds small models of the same classes
and trains them, once, on the synthetic *training* videos, into folders that load through the
very same `from_pretrained` calls:

| stand-in for                    | built here                                                  |
|---------------------------------|-------------------------------------------------------------|
| `timbrooks/instruct-pix2pix`    | tiny tokenizer + frozen random CLIP text encoder; VAE trained as an autoencoder (`training/autoencoder.py`), its `scaling_factor` measured; UNet instruct-pretrained on generic frame pairs (`training/instruct_pretrain.py`) |
| `microsoft/resnet-50`           | tiny ResNet pretrained on where things move (`training/resnet_pretrain.py`) |
| `openai/clip-vit-base-patch32`  | tiny CLIP text model + tokenizer, random (PAC-Net fine-tunes it) |

Each folder is content-addressed: its name carries a sha of (what is built, its config, the
training data's version), so a second build with the same inputs reuses it and a changed input
builds a new folder beside the old one. Folders are written atomically; `standin.json` inside
records the config, data version, losses, timings and quality measured (for the VAE: the round
trip on held-out frames).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from pecn_ml.metrics import psnr, ssim
from pecn_ml.models.tiny import (build_tiny_clip_text, build_tiny_resnet, build_tiny_tokenizer,
                                 ip2p_scheduler, save_pix2pix_pipeline, tiny_text_encoder,
                                 tiny_unet, tiny_vae)
from pecn_ml.models.weights import weights_sha256
from pecn_ml.training.autoencoder import (AutoencoderTrainConfig, latent_scaling_factor,
                                          roundtrip, train_autoencoder)
from pecn_ml.training.instruct_pretrain import InstructPretrainConfig, pretrain_instruct_unet
from pecn_ml.training.resnet_pretrain import ResnetPretrainConfig, pretrain_resnet
from pecn_ml.utils.files import atomic_dir, sha256_json, write_json_atomic

LogFn = Callable[[str], None]
REPORT = "standin.json"
FORMAT = 1
KINDS = ("pix2pix", "resnet", "clip_text")


@dataclass(frozen=True)
class StandinConfig:
    """How the stand-ins are built (the profile holds one; None in the real run)."""

    unet_channels: tuple[int, ...] = (32, 32)
    autoencoder: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    instruct: InstructPretrainConfig = field(default_factory=InstructPretrainConfig)
    resnet: ResnetPretrainConfig = field(default_factory=ResnetPretrainConfig)
    clip_hidden: int = 32
    seed: int = 0
    torch_threads: Optional[int] = None   # CPU threads while training (None: torch's)

    def part(self, kind: str) -> dict[str, Any]:
        """The settings that decide stand-in `kind` (its folder key)."""
        if kind == "pix2pix":
            return {"unet_channels": list(self.unet_channels), "seed": self.seed,
                    "autoencoder": asdict(self.autoencoder), "instruct": asdict(self.instruct)}
        if kind == "resnet":
            return {"seed": self.seed, "resnet": asdict(self.resnet)}
        if kind == "clip_text":
            return {"seed": self.seed, "hidden": self.clip_hidden}
        raise ValueError(f"unknown stand-in kind {kind!r}; one of {KINDS}")

    @classmethod
    def demo(cls) -> "StandinConfig":
        """The demo's (2 CPU cores, 96 px): VAE ~1.7 min, UNet ~1.5 min, ResNet ~20 s. Measured VAE
        round trips on the demo's validation frames 21 and 25 (240 training videos): 1100 steps
        25.6 dB basic / 25.3 dB back-and-forth, 1400 steps 26.3 / 25.9 (lr 6e-3: 25.1 / 24.8);
        on the earlier 144-video set 1100 steps gave only 23.7 dB on back-and-forth. The UNet's
        instruct pretraining was 350 steps; 250 since training runs in a launched process (its
        start-up, ~7 s per training, came out of the demo's 8-minute budget); the fine-tuning that
        follows makes up for it (README, "What the demo shows", measured after the change)."""
        return cls(autoencoder=AutoencoderTrainConfig(steps=1100, batch_size=48, crop=32),
                   instruct=InstructPretrainConfig(steps=250, batch_size=32, learning_rate=1e-3),
                   resnet=ResnetPretrainConfig(steps=600, batch_size=64))

    @classmethod
    def smoke(cls) -> "StandinConfig":
        """The test suite's: seconds, and the models learn only a little."""
        return cls(autoencoder=AutoencoderTrainConfig(steps=40, batch_size=16),
                   instruct=InstructPretrainConfig(steps=10, batch_size=8),
                   resnet=ResnetPretrainConfig(steps=10, batch_size=16))


@dataclass(frozen=True)
class BuiltStandin:
    """A stand-in folder and what its build recorded."""

    kind: str
    path: Path
    weights_sha256: str
    reused: bool                   # True: an identical earlier build was found
    report: dict[str, Any]


def standin_key(kind: str, config: StandinConfig, data_version: str) -> str:
    """16 hex chars naming the folder of a stand-in built from `data_version` with `config`."""
    return sha256_json({"format": FORMAT, "kind": kind, "config": config.part(kind),
                        "data": data_version})[:16]


def _folder_name(kind: str) -> str:
    return {"pix2pix": "instruct-pix2pix", "resnet": "resnet", "clip_text": "clip-text"}[kind]


def _curve(losses: Sequence[float]) -> dict[str, Any]:
    n = max(1, len(losses) // 20)
    return {"steps": len(losses), "first": float(np.mean(losses[:n])), "last": float(np.mean(losses[-n:])),
            "values": [round(float(v), 5) for v in losses]}


def _build(kind: str, root: str | Path, config: StandinConfig, data_version: str,
           builder: Callable[[Path], dict[str, Any]], log: LogFn) -> BuiltStandin:
    """Reuse the folder of an identical build, or build into a temp folder and rename."""
    folder = Path(root) / f"{_folder_name(kind)}-{standin_key(kind, config, data_version)}"
    report_path = folder / REPORT
    if report_path.is_file():
        log(f"stand-in {kind}: reusing {folder}")
        return BuiltStandin(kind, folder, weights_sha256(folder), True,
                            json.loads(report_path.read_text(encoding="utf-8")))
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        with atomic_dir(folder) as tmp:
            report = builder(tmp)
            report.update(kind=kind, format=FORMAT, config=config.part(kind), data_version=data_version,
                          seconds=round(time.perf_counter() - t0, 2))
            write_json_atomic(tmp / REPORT, report)
    finally:
        torch.set_num_threads(threads)
    log(f"stand-in {kind}: built {folder} in {report['seconds']:.1f}s")
    return BuiltStandin(kind, folder, weights_sha256(folder), False, report)


def build_standin_pix2pix(root: str | Path, videos: Sequence[np.ndarray], config: StandinConfig,
                          data_version: str, *, eval_frames: Optional[np.ndarray] = None,
                          log: Optional[LogFn] = None) -> BuiltStandin:
    """An InstructPix2Pix pipeline folder trained on `videos` (each (T, R, R, 3) uint8).

    `eval_frames` (N, R, R, 3), frames the VAE never saw, measure its round trip (SSIM, PSNR).
    """
    log = log or (lambda _m: None)
    if not videos:
        raise ValueError("build_standin_pix2pix: no training videos")

    def build(tmp: Path) -> dict[str, Any]:
        from diffusers import DDPMScheduler

        frames = np.concatenate(videos)                                       # (N, R, R, 3)
        tokenizer = build_tiny_tokenizer(tmp / "tokenizer")
        torch.manual_seed(config.seed)
        text_encoder = tiny_text_encoder(tokenizer).requires_grad_(False).eval()
        unet, vae = tiny_unet(8, config.unet_channels), tiny_vae()
        log(f"stand-in VAE: training on {len(frames)} frames of {len(videos)} videos")
        ae = train_autoencoder(vae, frames, config.autoencoder, log=log)
        scaling = latent_scaling_factor(vae, frames[:: max(1, len(frames) // 512)])
        vae.register_to_config(scaling_factor=scaling)
        report: dict[str, Any] = {"vae_scaling_factor": scaling, "autoencoder_loss": _curve(ae.losses),
                                  "autoencoder_seconds": ae.seconds, "train_frames": int(len(frames)),
                                  "train_videos": len(videos)}
        if eval_frames is not None and len(eval_frames):
            rt = roundtrip(vae, eval_frames)
            report.update(roundtrip_ssim=float(np.mean(ssim(rt, eval_frames))),
                          roundtrip_psnr=float(np.mean(psnr(rt, eval_frames))),
                          roundtrip_frames=int(len(eval_frames)))
            log(f"stand-in VAE round trip on {len(eval_frames)} held-out frames: SSIM "
                f"{report['roundtrip_ssim']:.4f}, PSNR {report['roundtrip_psnr']:.2f} dB")
        t0 = time.perf_counter()
        noise_scheduler = DDPMScheduler.from_config(ip2p_scheduler().config)
        losses = pretrain_instruct_unet(unet, vae, tokenizer, text_encoder, noise_scheduler, videos,
                                        config.instruct, log=log)
        report.update(instruct_loss=_curve(losses), instruct_seconds=round(time.perf_counter() - t0, 2))
        save_pix2pix_pipeline(tmp, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
        return report

    return _build("pix2pix", root, config, data_version, build, log)


def build_standin_resnet(root: str | Path, videos: Sequence[np.ndarray], config: StandinConfig,
                         data_version: str, *, log: Optional[LogFn] = None) -> BuiltStandin:
    """A `ResNetModel` folder (like `microsoft/resnet-50`) pretrained on where things move."""
    log = log or (lambda _m: None)
    if not videos:
        raise ValueError("build_standin_resnet: no training videos")

    def build(tmp: Path) -> dict[str, Any]:
        from transformers import ResNetModel

        build_tiny_resnet(tmp, seed=config.seed)
        resnet = ResNetModel.from_pretrained(tmp)
        losses = pretrain_resnet(resnet, videos, config.resnet, log=log)
        resnet.save_pretrained(tmp)
        return {"pretrain_loss": _curve(losses), "train_videos": len(videos)}

    return _build("resnet", root, config, data_version, build, log)


def build_standin_clip_text(root: str | Path, config: StandinConfig, *,
                            log: Optional[LogFn] = None) -> BuiltStandin:
    """A tiny `CLIPTextModel` + tokenizer folder (like `openai/clip-vit-base-patch32`), random."""
    def build(tmp: Path) -> dict[str, Any]:
        build_tiny_clip_text(tmp, hidden=config.clip_hidden, seed=config.seed)
        return {"trained": False}

    return _build("clip_text", root, config, "none", build, log or (lambda _m: None))
