"""Stand-ins for the pretrained weights: small models of the same classes, trained once on the
synthetic training videos, in folders that load through the same `from_pretrained` calls.

| stand-in for                    | built here                                                    |
|---------------------------------|---------------------------------------------------------------|
| `timbrooks/instruct-pix2pix`    | tiny tokenizer and CLIP text encoder; VAE trained as an autoencoder; UNet instruct-pretrained on frame pairs (and `StandinConfig.corpus`) |
| `microsoft/resnet-50`           | tiny ResNet pretrained on where things move                   |
| `openai/clip-vit-base-patch32`  | tiny CLIP text model + tokenizer, random                      |

A folder's name carries `standin_key` (kind, config, data version), so an identical build is reused;
`standin.json` records what the build measured. Verified copies of the demo's builds ship in
`shipped_standins/` (`python -m pecn_ml.models.standins ship|verify`; see docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from pecn_ml.data.synthetic import SyntheticConfig
from pecn_ml.metrics import psnr, ssim
from pecn_ml.models.pix2pix import write_latent_target
from pecn_ml.models.tiny import (build_tiny_clip_text, build_tiny_resnet, build_tiny_tokenizer,
                                 ip2p_scheduler, save_pix2pix_pipeline, tiny_text_encoder,
                                 tiny_unet, tiny_vae)
from pecn_ml.models.weights import WEIGHT_SUFFIXES, weights_sha256
from pecn_ml.training.autoencoder import (AutoencoderTrainConfig, latent_scaling_factor,
                                          roundtrip, train_autoencoder)
from pecn_ml.training.instruct_pretrain import InstructPretrainConfig, pretrain_instruct_unet
from pecn_ml.training.resnet_pretrain import ResnetPretrainConfig, pretrain_resnet
from pecn_ml.training.scaffold import torch_threads
from pecn_ml.utils.files import atomic_dir, sha256_file, sha256_json, write_json_atomic
from pecn_ml.utils.progress import LogFn

REPORT = "standin.json"
FORMAT = 1
# the hub weights each kind stands in for (the real run's, `pecn_ml.profiles`)
STANDS_IN_FOR = {"pix2pix": "timbrooks/instruct-pix2pix", "resnet": "microsoft/resnet-50",
                 "clip_text": "openai/clip-vit-base-patch32"}
SHIPPED = Path(__file__).with_name("shipped_standins")   # the package's shipped stand-ins
MANIFEST = "shipped.json"
_FOLDERS = {"pix2pix": "instruct-pix2pix", "resnet": "resnet", "clip_text": "clip-text"}   # kind -> folder prefix
_KIND_OF = {folder: kind for kind, folder in _FOLDERS.items()}
_NAME = re.compile(rf"^({'|'.join(_KIND_OF)})-[0-9a-f]{{16}}$")


@dataclass(frozen=True)
class StandinConfig:
    """How the stand-ins are built (the profile holds one; None in the real run)."""

    unet_channels: tuple[int, ...] = (32, 32)
    unet_dtype: str = "float32"     # as saved; "float16" halves the file and still loads as float32
    autoencoder: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    instruct: InstructPretrainConfig = field(default_factory=InstructPretrainConfig)
    resnet: ResnetPretrainConfig = field(default_factory=ResnetPretrainConfig)
    clip_hidden: int = 32
    # more synthetic videos (a seed of their own) the UNet is pretrained on, so that it learns how
    # named actions move things instead of memorising the training videos (None: none)
    corpus: Optional[SyntheticConfig] = None
    scheduler: str = "euler_ancestral"     # the pipeline's sampler (a key of tiny.SCHEDULERS)
    prediction_type: str = "epsilon"       # what the UNet predicts: "epsilon", "v_prediction", "sample"
    seed: int = 0
    torch_threads: Optional[int] = None   # CPU threads while training (None: torch's)

    def __post_init__(self) -> None:
        if self.unet_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"StandinConfig.unet_dtype must be float32, float16 or bfloat16, got {self.unet_dtype!r}")

    def part(self, kind: str) -> dict[str, Any]:
        """The settings that decide stand-in `kind` (its folder key)."""
        if kind == "pix2pix":
            # these defaults are left out of older builds' keys
            defaults = (("latent_target", "frame"), ("plain_gap", None), ("progress_prob", 0.0),
                        ("progress_frame", None), ("train_text_encoder", False))
            instruct = {name: v for name, v in asdict(self.instruct).items() if (name, v) not in defaults}
            part = {"unet_channels": list(self.unet_channels), "seed": self.seed,
                    "autoencoder": asdict(self.autoencoder), "instruct": instruct}
            if (self.scheduler, self.prediction_type) != ("euler_ancestral", "epsilon"):
                part.update(scheduler=self.scheduler, prediction_type=self.prediction_type)
            if self.corpus is not None:
                part.update(corpus=asdict(self.corpus))
            if self.unet_dtype != "float32":
                part.update(unet_dtype=self.unet_dtype)
            return part
        if kind == "resnet":
            return {"seed": self.seed, "resnet": asdict(self.resnet)}
        if kind == "clip_text":
            return {"seed": self.seed, "hidden": self.clip_hidden}
        raise ValueError(f"unknown stand-in kind {kind!r}; one of {tuple(STANDS_IN_FOR)}")

    @classmethod
    def demo(cls) -> "StandinConfig":
        """The demo's (2 CPU cores, 96 px): VAE ~1.7 min, UNet ~1.5 min, ResNet ~20 s."""
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


def _curve(losses: Sequence[float]) -> dict[str, Any]:
    n = max(1, len(losses) // 20)
    return {"steps": len(losses), "first": float(np.mean(losses[:n])), "last": float(np.mean(losses[-n:])),
            "values": [round(float(v), 5) for v in losses]}


def standin_card(kind: str, folder_name: str, report: dict[str, Any], run_id: str = "", source: str = "built"):
    """The model card of a stand-in folder from its `standin.json` report (trained from scratch: no base)."""
    from pecn_ml.model_cards import STANDIN_LICENSE_NAME, CardContext, build_card

    config = report.get("config", {})
    curves = {k: {"steps": v.get("steps"), "first": v.get("first"), "last": v.get("last")}
              for k, v in report.items() if isinstance(v, dict) and "values" in v}
    scalars = {k: v for k, v in report.items()
               if (k.startswith(("roundtrip_", "train_")) or k == "trained") and not isinstance(v, dict)}
    return build_card(
        title=f"PECN demo stand-in for {STANDS_IN_FOR[kind]}", kind=f"standin-{kind}",
        description=(f"A small `{STANDS_IN_FOR[kind]}`-shaped model built from random initialisation by "
                     f"`pecn_ml.models.standins` ({source}), for the demo and tests; it loads with the same "
                     "`from_pretrained` call as the hub weights. Not the hub model, and no hub weights in it."),
        context=CardContext(run_id=run_id, data_versions={"training_frames": str(report.get("data_version", ""))}),
        training_config=config, seed=config.get("seed"), loss_summary={**curves, **scalars},
        library_name="diffusers" if kind == "pix2pix" else "transformers", own_license=STANDIN_LICENSE_NAME,
        extra={"stands_in_for": STANDS_IN_FOR[kind], "standin_folder": folder_name, "standin_source": source})


def _ensure_card(kind: str, folder: Path, report: dict[str, Any], log: LogFn) -> None:
    """Give a folder built before the cards its card (weights untouched)."""
    from pecn_ml.model_cards import CARD_NAME, write_card

    if (folder / CARD_NAME).is_file():
        return
    try:
        write_card(folder, standin_card(kind, folder.name, report, source="built before cards; card added on reuse"))
    except OSError as e:   # a read-only folder is still usable, only without its card
        log(f"stand-in {kind}: WARNING: cannot add a model card to {folder} ({e})")
        return
    log(f"stand-in {kind}: added the missing model card to {folder}")


def _build(kind: str, root: str | Path, config: StandinConfig, data_version: str,
           builder: Callable[[Path], dict[str, Any]], log: LogFn,
           shipped: Optional[str | Path] = SHIPPED, run_id: str = "") -> BuiltStandin:
    """Reuse an identical build, else copy a verified shipped one (`shipped`; None: none), else build
    atomically. Every folder gets a model card naming `run_id`."""
    from pecn_ml.model_cards import write_card

    folder = Path(root) / f"{_FOLDERS[kind]}-{standin_key(kind, config, data_version)}"
    report_path = folder / REPORT
    if report_path.is_file():
        log(f"stand-in {kind}: reusing {folder}")
        report = json.loads(report_path.read_text(encoding="utf-8"))
        _ensure_card(kind, folder, report, log)
        return BuiltStandin(kind, folder, weights_sha256(folder), True, report)
    if shipped is not None:
        copied = _from_shipped(kind, folder, Path(shipped), config.part(kind), data_version, log, run_id)
        if copied is not None:
            return copied
    t0 = time.perf_counter()
    with torch_threads(config.torch_threads or None), atomic_dir(folder) as tmp:
        report = builder(tmp)
        report.update(kind=kind, format=FORMAT, config=config.part(kind), data_version=data_version,
                      seconds=round(time.perf_counter() - t0, 2))
        write_json_atomic(tmp / REPORT, report)
        write_card(tmp, standin_card(kind, folder.name, report, run_id))
    log(f"stand-in {kind}: built {folder} in {report['seconds']:.1f}s")
    return BuiltStandin(kind, folder, weights_sha256(folder), False, report)


def build_standin_pix2pix(root: str | Path, videos: Sequence[np.ndarray], config: StandinConfig,
                          data_version: str, *, texts: Optional[Sequence[str]] = None,
                          eval_frames: Optional[np.ndarray] = None, prompt_text: str = "class",
                          log: Optional[LogFn] = None, shipped: Optional[str | Path] = SHIPPED,
                          run_id: str = "") -> BuiltStandin:
    """An InstructPix2Pix pipeline folder trained on `videos` (each (T, R, R, 3) uint8).

    `texts`: each video's action text (part of `data_version` then); `eval_frames` (N, R, R, 3), held-out
    frames for the VAE's round trip; `config.corpus` videos are generated in the temp folder and added
    to the UNet's pretraining, their texts written as `prompt_text`."""
    log = log or (lambda _m: None)
    if not videos:
        raise ValueError("build_standin_pix2pix: no training videos")

    def build(tmp: Path) -> dict[str, Any]:
        from diffusers import DDPMScheduler

        frames = np.concatenate(videos)                                       # (N, R, R, 3)
        tokenizer = build_tiny_tokenizer(tmp / "tokenizer")
        torch.manual_seed(config.seed)
        text_encoder = tiny_text_encoder(tokenizer)      # trained with the UNet or frozen: config.instruct
        unet, vae = tiny_unet(8, config.unet_channels), tiny_vae()
        if config.instruct.latent_target == "change":
            # it starts as "no change" (latent copy) and learns only where frames change
            with torch.no_grad():
                unet.conv_out.weight.zero_()
                unet.conv_out.bias.zero_()
        log(f"stand-in VAE: training on {len(frames)} frames of {len(videos)} videos")
        t0 = time.perf_counter()
        ae_losses = train_autoencoder(vae, frames, config.autoencoder, log=log)
        ae_seconds = round(time.perf_counter() - t0, 3)
        scaling = latent_scaling_factor(vae, frames[:: max(1, len(frames) // 512)])
        vae.register_to_config(scaling_factor=scaling)
        report: dict[str, Any] = {"vae_scaling_factor": scaling, "autoencoder_loss": _curve(ae_losses),
                                  "autoencoder_seconds": ae_seconds, "train_frames": int(len(frames)),
                                  "train_videos": len(videos)}
        if eval_frames is not None and len(eval_frames):
            rt = roundtrip(vae, eval_frames)
            report.update(roundtrip_ssim=float(np.mean(ssim(rt, eval_frames))),
                          roundtrip_psnr=float(np.mean(psnr(rt, eval_frames))),
                          roundtrip_frames=int(len(eval_frames)))
            log(f"stand-in VAE round trip on {len(eval_frames)} held-out frames: SSIM "
                f"{report['roundtrip_ssim']:.4f}, PSNR {report['roundtrip_psnr']:.2f} dB")
        t0 = time.perf_counter()
        unet_videos, unet_texts = list(videos), None if texts is None else list(texts)
        if config.corpus is not None:
            extra, extra_texts = corpus_videos(tmp / "corpus", config.corpus, int(frames.shape[1]),
                                               prompt_text, log)
            unet_videos += extra
            unet_texts = None if unet_texts is None else unet_texts + extra_texts
            report.update(corpus_videos=len(extra), corpus_seconds=round(time.perf_counter() - t0, 2))
            t0 = time.perf_counter()
        scheduler = ip2p_scheduler(config.scheduler, config.prediction_type)
        noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        losses = pretrain_instruct_unet(unet, vae, tokenizer, text_encoder, noise_scheduler, unet_videos,
                                        config.instruct, texts=unet_texts, log=log)
        shutil.rmtree(tmp / "corpus", ignore_errors=True)
        report.update(instruct_loss=_curve(losses), instruct_seconds=round(time.perf_counter() - t0, 2),
                      instruct_videos=len(unet_videos))
        save_pix2pix_pipeline(tmp, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              unet=unet.to(getattr(torch, config.unet_dtype)), scheduler=scheduler)
        if config.instruct.latent_target != "frame":      # absent: "frame", as in every hub model
            write_latent_target(tmp, config.instruct.latent_target)
        return report

    return _build("pix2pix", root, config, data_version, build, log, shipped, run_id)


def corpus_videos(data_dir: Path, corpus: SyntheticConfig, resolution: int, prompt_text: str,
                  log: LogFn) -> tuple[list[np.ndarray], list[str]]:
    """(frames, action text) of the filtered training videos of `corpus`, written to `data_dir`."""
    from pecn_ml.data.annotations import TRAIN_FILTERED, FilterConfig, filter_annotations
    from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache
    from pecn_ml.data.synthetic import write_synthetic_ssv2
    from pecn_ml.prompts import action_text

    write_synthetic_ssv2(data_dir, corpus, log=log)
    filtered = filter_annotations(data_dir, FilterConfig(), log=log)
    entries = filtered.entries[TRAIN_FILTERED]
    build_frame_cache(data_dir, resolution, [e["id"] for e in entries], log=log)
    cache = open_frame_cache(data_dir, resolution)
    entries = [e for e in entries if e["id"] in cache]
    if not entries:
        raise ValueError(f"stand-in corpus at {data_dir}: no decodable training video (kept by the filter: {filtered.counts})")
    log(f"stand-in corpus: {len(entries)} training videos at {resolution} px")
    return [cache.frames(e["id"]) for e in entries], [action_text(e, prompt_text) for e in entries]


def build_standin_resnet(root: str | Path, videos: Sequence[np.ndarray], config: StandinConfig,
                         data_version: str, *, log: Optional[LogFn] = None,
                         shipped: Optional[str | Path] = SHIPPED, run_id: str = "") -> BuiltStandin:
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

    return _build("resnet", root, config, data_version, build, log, shipped, run_id)


def build_standin_clip_text(root: str | Path, config: StandinConfig, *, log: Optional[LogFn] = None,
                            shipped: Optional[str | Path] = SHIPPED, run_id: str = "") -> BuiltStandin:
    """A tiny `CLIPTextModel` + tokenizer folder (like `openai/clip-vit-base-patch32`), random."""
    def build(tmp: Path) -> dict[str, Any]:
        build_tiny_clip_text(tmp, hidden=config.clip_hidden, seed=config.seed)
        return {"trained": False}

    return _build("clip_text", root, config, "none", build, log or (lambda _m: None), shipped, run_id)


class ShippedMismatch(Exception):
    """A shipped stand-in folder that does not match its manifest entry (the message says where)."""


def read_manifest(shipped: str | Path) -> dict[str, Any]:
    """`shipped.json` of a shipped folder, {folder name: entry}; {} where there is none."""
    path = Path(shipped) / MANIFEST
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a JSON object")
    return manifest


def _check_entry(name: str, entry: dict[str, Any]) -> None:
    """The manifest entry of folder `name` is whole: its kind, its report, its weights' sha."""
    match = _NAME.match(name)
    if not match or entry.get("kind") != _KIND_OF[match[1]]:
        raise ShippedMismatch(f"manifest entry of kind {entry.get('kind')!r} does not fit the name")
    files = entry.get("files")
    if not isinstance(files, dict) or REPORT not in files:
        raise ShippedMismatch(f"manifest lists no {REPORT}")
    weights = {p: sha for p, sha in files.items() if p.endswith(WEIGHT_SUFFIXES)}
    if not weights or sha256_json(weights) != entry.get("weights_sha256"):
        raise ShippedMismatch("manifest's weights_sha256 is not that of its weight files")


def _copy_verified(src: Path, files: dict[str, str], dest: Optional[Path]) -> None:
    """Check every file of `files` (relative path -> sha256) under `src`, copying it to `dest`."""
    for rel, sha in sorted(files.items()):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ShippedMismatch(f"{rel}: not a path inside the folder")
        try:
            data = (src / rel).read_bytes()
        except OSError:
            raise ShippedMismatch(f"{src / rel}: missing") from None
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise ShippedMismatch(f"{src / rel}: sha256 {got[:12]}… is not the manifest's {sha[:12]}…")
        if dest is not None:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)


def _from_shipped(kind: str, folder: Path, shipped: Path, part: dict[str, Any], data_version: str,
                  log: LogFn, run_id: str = "") -> Optional[BuiltStandin]:
    """Copy the shipped stand-in named like `folder` into it (atomically) if it verifies, with a card
    of its own naming `run_id`; None where none is shipped or it fails (with a warning)."""
    from pecn_ml.model_cards import write_card

    name = folder.name
    try:
        manifest = read_manifest(shipped)
    except (OSError, ValueError) as e:                     # JSONDecodeError is a ValueError
        log(f"stand-in {kind}: WARNING: shipped manifest {shipped / MANIFEST} unreadable ({e}); building")
        return None
    entry = manifest.get(name)
    if entry is None:
        others = sorted(n for n in manifest if n.startswith(f"{_FOLDERS[kind]}-"))
        if others:  # shipped for another config or data version: say why the demo is slow
            log(f"stand-in {kind}: no shipped weights {name} (shipped: {', '.join(others)}); building")
        return None
    try:
        _check_entry(name, entry)
        if entry.get("config") != json.loads(json.dumps(part)) or entry.get("data_version") != data_version:
            raise ShippedMismatch("manifest's config or data version is not this build's")
        with atomic_dir(folder) as tmp:
            _copy_verified(shipped / name, entry["files"], tmp)
            report = json.loads((tmp / REPORT).read_text(encoding="utf-8"))
            write_card(tmp, standin_card(kind, name, report, run_id, source="copied from the shipped stand-ins"))
    except ShippedMismatch as e:
        log(f"stand-in {kind}: WARNING: shipped weights {name} fail verification ({e}); "
            f"not using them, building instead")
        return None
    log(f"stand-in {kind}: shipped weights {name} (verified)")
    return BuiltStandin(kind, folder, weights_sha256(folder), True, {**report, "source": "shipped"})


def _problem(shipped: Path, name: str, entry: dict[str, Any]) -> Optional[str]:
    """None if shipped folder `name` matches its manifest entry, else what is wrong."""
    try:
        _check_entry(name, entry)
        _copy_verified(shipped / name, entry["files"], None)
    except ShippedMismatch as e:
        return str(e)
    return None


def verify_shipped(shipped: str | Path = SHIPPED) -> dict[str, Optional[str]]:
    """{folder name: None if it verifies, else what is wrong} for every entry of the manifest."""
    return {name: _problem(Path(shipped), name, entry) for name, entry in sorted(read_manifest(shipped).items())}


def completed_standins(src_root: str | Path) -> dict[str, dict[str, Any]]:
    """{folder name: its standin.json} of the stand-ins of this format built under `src_root`."""
    out = {}
    for folder in sorted(Path(src_root).iterdir()) if Path(src_root).is_dir() else []:
        match = _NAME.match(folder.name)
        if not (match and (folder / REPORT).is_file()):
            continue
        report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
        if (report.get("kind") == _KIND_OF[match[1]] and report.get("format") == FORMAT
                and {"config", "data_version"} <= set(report)):
            out[folder.name] = report
    return out


def _chosen(found: dict[str, dict[str, Any]], src_root: Path, names: Sequence[str], latest: bool) -> list[str]:
    unknown = [n for n in names if n not in found]
    if unknown:
        raise FileNotFoundError(f"{src_root}: no completed stand-in {', '.join(unknown)}")
    chosen = list(names) or sorted(found)
    if latest:
        by_age = sorted(chosen, key=lambda n: (src_root / n / REPORT).stat().st_mtime)
        chosen = sorted({found[name]["kind"]: name for name in by_age}.values())   # the newest of each kind
    if not chosen:
        raise FileNotFoundError(f"{src_root}: no completed stand-in folders ({{kind}}-{{key}}/{REPORT})")
    return chosen


def _copy_folder(src: Path, dest: Path) -> dict[str, str]:
    """Copy `src`'s files (no hidden ones) into `dest` atomically; {relative path: sha256}."""
    rels = [p.relative_to(src) for p in sorted(src.rglob("*")) if p.is_file()]
    files = {rel.as_posix(): sha256_file(src / rel) for rel in rels if not any(s.startswith(".") for s in rel.parts)}
    with atomic_dir(dest) as tmp:
        _copy_verified(src, files, tmp)
    return files


def ship(src_root: str | Path, dest: str | Path = SHIPPED, names: Sequence[str] = (), *,
         latest: bool = False, prune: bool = False, log: LogFn = print) -> dict[str, Any]:
    """Copy the completed stand-ins of `src_root` (all, `names`, or with `latest` the newest of each
    kind) into `dest` and rewrite its manifest; return it. A stand-in already shipped under its name
    that verifies is left as it is (card included). Other entries stay while their folder is there,
    unless `prune`."""
    src_root, dest = Path(src_root), Path(dest)
    if src_root.resolve() == dest.resolve():
        raise ValueError(f"{src_root}: source and destination are the same folder")
    found = completed_standins(src_root)
    chosen = _chosen(found, src_root, names, latest)
    try:
        old = read_manifest(dest)
    except ValueError as e:
        log(f"warning: {e}; starting a new manifest")
        old = {}
    manifest = {n: e for n, e in old.items() if (n in chosen or not prune) and (dest / n).is_dir()}
    for name in chosen:
        if name in manifest and _problem(dest, name, manifest[name]) is None:
            log(f"{name}: already shipped, left as it is")
            continue
        files, report = _copy_folder(src_root / name, dest / name), found[name]
        manifest[name] = {"kind": report["kind"], "weights_sha256": weights_sha256(dest / name),
                          "files": files, "config": report["config"], "data_version": report["data_version"]}
        log(f"shipped {name}: {len(files)} files, {sum((dest / name / f).stat().st_size for f in files) / 1e6:.2f} MB")
    write_json_atomic(dest / MANIFEST, dict(sorted(manifest.items())))
    for folder in sorted(dest.iterdir()):
        if prune and folder.is_dir() and _NAME.match(folder.name) and folder.name not in manifest:
            shutil.rmtree(folder)
            log(f"removed {folder.name} (no longer shipped)")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pecn_ml.models.standins",
                                 description="Ship built stand-ins with the package, or verify those shipped.")
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("ship", help="copy built stand-in folders into the shipped folder")
    sp.add_argument("src_root", help="where they were built, e.g. outputs/demo/pretrained")
    sp.add_argument("names", nargs="*", help="folder names to ship (default: every completed one)")
    sp.add_argument("--latest", action="store_true", help="per kind only the folder built last")
    sp.add_argument("--prune", action="store_true", help="drop shipped folders not shipped now")
    for p in (sp, sub.add_parser("verify", help="check every shipped folder against the manifest")):
        p.add_argument("--dest", default=str(SHIPPED), help="the shipped folder (default: the package's)")
    args = ap.parse_args(argv)
    try:
        if args.command == "ship":
            ship(args.src_root, args.dest, args.names, latest=args.latest, prune=args.prune)
            return 0
        problems = verify_shipped(args.dest)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, problem in problems.items():
        print(f"{name}: {problem or 'ok'}")
    print(f"{len(problems)} shipped stand-ins, {sum(p is not None for p in problems.values())} failing")
    return int(any(problems.values()))


if __name__ == "__main__":
    sys.exit(main())
