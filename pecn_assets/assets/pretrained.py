"""Base weights every model starts from: hub weights pinned to a commit (full profile) or stand-ins
trained on the synthetic training videos (demo), a `Weights` handle whose sha covers the folder."""

import hashlib

import dagster as dg
import numpy as np

from pecn_assets.metadata import image_md, materialized, table_md
from pecn_assets.partitions import Partitions
from pecn_assets.resources import PecnSettings, PretrainedModels
from pecn_ml.artifacts import MANIFEST, FilteredAnnotations, FrameCacheRef, Weights
from pecn_ml.images import plot_loss_curve
from pecn_ml.models.standins import (STANDS_IN_FOR, BuiltStandin, build_standin_clip_text,
                                     build_standin_pix2pix, build_standin_resnet)
from pecn_ml.models.weights import ResolvedWeights, resolve_weights
from pecn_ml.prompts import action_text
from pecn_ml.utils.files import folder_manifest, manifest_sha256, sha256_json
from pecn_ml.utils.usage import bytes_on_disk, safetensors_parameters


def training_videos(annotations: FilteredAnnotations, frame_cache: FrameCacheRef, prompt_text: str = "class"
                    ) -> tuple[list[np.ndarray], list[str], str, np.ndarray]:
    """Every frame of the training videos (one array per video), their action texts (as prompts
    write them), their data version, and the input frames of the basic eval set (held out, for the
    VAE round trip)."""
    cache = frame_cache.open()
    entries = [e for e in annotations.train() if e["id"] in cache]
    ids, texts = [e["id"] for e in entries], [action_text(e, prompt_text) for e in entries]
    val = [e["id"] for e in annotations.eval_set("basic") if e["id"] in cache]
    held_out = np.stack([cache.frame(v, min(20, cache.num_frames(v) - 1)) for v in val])
    videos = [cache.frames(v) for v in ids]
    # keyed by what the models see (the decoded frames), not by the video files' bytes
    frames = hashlib.sha256()
    for v in videos:
        frames.update(np.ascontiguousarray(v).data)
    version = sha256_json({"frames": frames.hexdigest(), "resolution": cache.resolution, "videos": ids, "texts": texts})
    return videos, texts, version, held_out


def _standin_metadata(weights: BuiltStandin) -> dict:
    """A stand-in's build report and loss curves."""
    report = weights.report
    curves = {k: v for k, v in report.items() if isinstance(v, dict) and "values" in v}
    pngs = [plot_loss_curve(c["values"], weights.path.parent / "curves" / f"{weights.path.name}-{k}.png",
                            title=f"{weights.kind} stand-in: {k.replace('_', ' ')}") for k, c in curves.items()]
    summary = {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
    return {"source": "stand-in trained on the synthetic training videos", "reused": weights.reused,
            "build": dg.MetadataValue.md(table_md([summary])),
            **({"loss_curves": dg.MetadataValue.md(image_md(pngs, "training losses"))} if pngs else {})}


def _result(role: str, weights: ResolvedWeights | BuiltStandin, **extra) -> dg.MaterializeResult:
    """The `Weights` handle of a folder (sha of its manifest) with its source, sizes and `extra`."""
    if isinstance(weights, ResolvedWeights):
        source, name, revision = "hub", weights.name, weights.revision or ""
        meta = {"source": "hub", "name": name, "revision": revision or "local folder",
                "files": dg.MetadataValue.json(weights.files)}
    else:  # the folder's name is its content key
        source, name, revision = "stand-in", f"stand-in for {STANDS_IN_FOR[weights.kind]}", weights.path.name
        meta = _standin_metadata(weights)
    files = folder_manifest(weights.path)
    handle = Weights(role=role, path=str(weights.path), sha256=manifest_sha256(files), source=source,
                     name=name, revision=revision, sha256_scheme=MANIFEST, files=files)
    return materialized(handle, handle.sha256, **meta, parameters=safetensors_parameters(weights.path),
                        bytes_on_disk=bytes_on_disk(weights.path, follow_symlinks=True), **extra)


def build_pretrained_assets(parts: Partitions) -> list:
    """pix2pix_base, resnet_base, clip_text_base: stand-ins (demo) read the training videos, hub weights none."""
    profile = parts.profile
    if profile.standins is None:
        return [_hub_asset(role) for role in DESCRIPTIONS]

    @dg.asset(group_name="pretrained", kinds={"pytorch"}, code_version="2", description=DESCRIPTIONS["pix2pix_base"],
              ins=parts.frame_cache_at(profile.pix2pix_resolution))
    def pix2pix_base(context: dg.AssetExecutionContext, settings: PecnSettings, filtered_annotations: FilteredAnnotations,
                     frame_cache: FrameCacheRef) -> dg.MaterializeResult:
        videos, texts, version, held_out = training_videos(filtered_annotations, frame_cache, profile.prompt_text)
        built = build_standin_pix2pix(settings.outputs_path() / "pretrained", videos, profile.standins, version,
                                      texts=texts, eval_frames=held_out, prompt_text=profile.prompt_text,
                                      log=context.log.info, run_id=context.run.run_id)
        return _result("pix2pix_base", built,
                       roundtrip_psnr=float(built.report.get("roundtrip_psnr", float("nan"))),
                       roundtrip_ssim=float(built.report.get("roundtrip_ssim", float("nan"))))

    @dg.asset(group_name="pretrained", kinds={"pytorch"}, code_version="2", description=DESCRIPTIONS["resnet_base"],
              ins=parts.frame_cache_at(profile.pacnet_resolution))
    def resnet_base(context: dg.AssetExecutionContext, settings: PecnSettings, filtered_annotations: FilteredAnnotations,
                    frame_cache: FrameCacheRef) -> dg.MaterializeResult:
        videos, _, version, _ = training_videos(filtered_annotations, frame_cache)
        return _result("resnet_base", build_standin_resnet(settings.outputs_path() / "pretrained", videos,
                                                           profile.standins, version, log=context.log.info,
                                                           run_id=context.run.run_id))

    @dg.asset(group_name="pretrained", kinds={"pytorch"}, code_version="2", description=DESCRIPTIONS["clip_text_base"])
    def clip_text_base(context: dg.AssetExecutionContext, settings: PecnSettings) -> dg.MaterializeResult:
        return _result("clip_text_base", build_standin_clip_text(settings.outputs_path() / "pretrained",
                                                                 profile.standins, log=context.log.info,
                                                                 run_id=context.run.run_id))

    return [pix2pix_base, resnet_base, clip_text_base]


DESCRIPTIONS = {
    "pix2pix_base": "InstructPix2Pix weights the variants are fine-tuned from: timbrooks/instruct-pix2pix pinned to "
                    "a commit, or the demo's trained stand-in.",
    "resnet_base": "PAC-Net's frame encoder: microsoft/resnet-50 pinned to a commit, or the demo's stand-in "
                   "pretrained on where things move.",
    "clip_text_base": "PAC-Net's text encoder: openai/clip-vit-base-patch32 pinned to a commit, or the demo's small "
                      "random stand-in.",
}


def _hub_asset(role: str) -> dg.AssetsDefinition:
    """A base-weights asset of the real run: the `models` resource's hub name, pinned to a commit."""

    @dg.asset(name=role, group_name="pretrained", kinds={"pytorch"}, code_version="2", description=DESCRIPTIONS[role])
    def _hub_weights(models: PretrainedModels) -> dg.MaterializeResult:
        name = role.removesuffix("_base")  # the `models` fields: pix2pix, pix2pix_revision, ...
        return _result(role, resolve_weights(getattr(models, name), getattr(models, f"{name}_revision")))

    return _hub_weights
