"""The rehearsal (`make rehearse`): the real run's models at their real sizes with random weights,
built locally (no hub), fp32 safetensors laid out like `timbrooks/instruct-pix2pix`,
`microsoft/resnet-50` and `openai/clip-vit-base-patch32` (only the tokenizer is small; every
parameter count is real); the policy that fits the `rehearsal` profile to a machine without CUDA;
and the report of its steps.

    python -m pecn_ml.rehearsal --out outputs/rehearsal_models   # builds once, prints sizes and costs
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from pecn_ml.models.tiny import _build_once, build_tiny_tokenizer, save_pix2pix_pipeline

CLIP_VOCAB = 49408
CLIP_MAX_LEN = 77
GIB = 2 ** 30

# diffusers UNet2DConditionModel: Stable Diffusion 1.5, widened to 8 input channels as in
# timbrooks/instruct-pix2pix (noisy latents + image latents).
SD15_UNET = dict(
    sample_size=64, in_channels=8, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=768, attention_head_dim=8,
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    downsample_padding=1, center_input_sample=False,
)

# diffusers AutoencoderKL: the Stable Diffusion VAE (8x downsampling, 4 latent channels).
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
    sample_size=512, scaling_factor=0.18215,
)

# transformers CLIPTextConfig of openai/clip-vit-large-patch14 (SD 1.5's text encoder) and of
# openai/clip-vit-base-patch32; token ids are set to the tokenizer's when a folder is built.
CLIP_L14_TEXT = dict(vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                     max_position_embeddings=CLIP_MAX_LEN, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5)
CLIP_B32_TEXT = dict(CLIP_L14_TEXT, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                     projection_dim=512)

# transformers ResNetConfig of microsoft/resnet-50.
RESNET50 = dict(num_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                depths=[3, 4, 6, 3], layer_type="bottleneck", hidden_act="relu",
                downsample_in_first_stage=False)

# The memory estimate that decides gradient checkpointing on the CPU: fp32 UNet weights, their
# gradients and AdamW's two moments (16 bytes per parameter), the frozen VAE and text encoder
# twice (training, and the pipeline built for the final save), plus room for activations.
UNET_TRAIN_BYTES_PER_PARAM = 16
FROZEN_BYTES_PER_PARAM = 8
HEADROOM_BYTES = 8 * GIB


@dataclass(frozen=True)
class RehearsalModels:
    """Folders of the full-size random models; each is passed where a hub name would be."""

    pix2pix: Path     # for timbrooks/instruct-pix2pix
    resnet: Path      # for microsoft/resnet-50
    clip_text: Path   # for openai/clip-vit-base-patch32


# --- builders (each takes its configs, so a test can run them at a small size) -------------------

def clip_text(arch: dict, tokenizer: Any = None):
    from transformers import CLIPTextConfig, CLIPTextModel

    ids = {}
    if tokenizer is not None:  # the token ids of the tokenizer this encoder ships with
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        ids = dict(bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos)
    return CLIPTextModel(CLIPTextConfig(**arch, **ids))


def resnet(config: dict = RESNET50):
    from transformers import ResNetConfig, ResNetModel

    return ResNetModel(ResNetConfig(**config))


def build_pix2pix_folder(out_dir: str | Path, *, unet_config: dict = SD15_UNET, vae_config: dict = SD_VAE,
                         text_config: dict = CLIP_L14_TEXT, seed: int = 0) -> Path:
    """An InstructPix2Pix pipeline folder (`save_pix2pix_pipeline`) of random parts in fp32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    out_dir = Path(out_dir)
    tok = build_tiny_tokenizer(out_dir / "tokenizer", model_max_length=CLIP_MAX_LEN)
    torch.manual_seed(seed)
    return save_pix2pix_pipeline(out_dir, vae=AutoencoderKL(**vae_config), text_encoder=clip_text(text_config, tok),
                                 tokenizer=tok, unet=UNet2DConditionModel(**unet_config))


def build_clip_text_folder(out_dir: str | Path, *, text_config: dict = CLIP_B32_TEXT, seed: int = 0) -> Path:
    """CLIPTextModel + tokenizer in one folder, loaded like `openai/clip-vit-base-patch32`."""
    out_dir = Path(out_dir)
    tok = build_tiny_tokenizer(out_dir, model_max_length=CLIP_MAX_LEN)
    torch.manual_seed(seed)
    clip_text(text_config, tok).save_pretrained(out_dir)
    return out_dir


def build_resnet_folder(out_dir: str | Path, *, config: dict = RESNET50, seed: int = 0) -> Path:
    """`ResNetModel` folder, loaded like `microsoft/resnet-50`."""
    torch.manual_seed(seed)
    resnet(config).save_pretrained(out_dir)
    return Path(out_dir)


def model_folders(root: str | Path) -> RehearsalModels:
    """Where `build_rehearsal_models(root)` puts each model (nothing is built or checked)."""
    root = Path(root)
    return RehearsalModels(pix2pix=root / "instruct-pix2pix", resnet=root / "resnet-50",
                           clip_text=root / "clip-vit-base-patch32")


def build_rehearsal_models(root: str | Path, log: Callable = partial(print, flush=True)) -> RehearsalModels:
    """Build (once, atomically, one model in memory at a time) the full-size random models under
    `root`, logging each folder's seconds, bytes on disk and the peak RSS so far."""
    from pecn_ml.utils.usage import bytes_on_disk, peak_rss

    folders = model_folders(root)
    for target, builder in ((folders.pix2pix, build_pix2pix_folder), (folders.resnet, build_resnet_folder),
                            (folders.clip_text, build_clip_text_folder)):
        t0, fresh = time.perf_counter(), not (target / ".complete").exists()
        _build_once(target, builder)
        gc.collect()  # free the builder's tensors before the next model is built
        log(f"{target.name}: {'built' if fresh else 'reused'} in {time.perf_counter() - t0:.1f}s, "
            f"{bytes_on_disk(target):,} bytes on disk, peak RSS so far {peak_rss().self_bytes / GIB:.2f} GiB")
    return folders


def rehearsal_param_counts() -> dict[str, int]:
    """Parameters of each rehearsal model, from their configs on the meta device (no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**SD15_UNET), "vae": AutoencoderKL(**SD_VAE),
                  "text_encoder": clip_text(CLIP_L14_TEXT), "resnet": resnet(), "clip_text": clip_text(CLIP_B32_TEXT)}
    return {name: int(sum(p.numel() for p in m.parameters())) for name, m in models.items()}


# --- the policy: the rehearsal profile as this machine runs it ----------------------------------

def total_memory_bytes() -> int:
    """Physical memory of the machine (stable between the parent and its step processes)."""
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def unet_training_bytes(counts: Optional[dict[str, int]] = None) -> int:
    """Estimated bytes of an InstructPix2Pix fine-tuning step without activations (see above)."""
    counts = counts or rehearsal_param_counts()
    return (UNET_TRAIN_BYTES_PER_PARAM * counts["unet"]
            + FROZEN_BYTES_PER_PARAM * (counts["vae"] + counts["text_encoder"]))


def _pix2pix_on_cpu(p2p, memory: int, need: int) -> tuple[dict, list[str]]:
    changes: dict[str, Any] = {}
    notes: list[str] = []
    if p2p.train_batch_size > 1 or p2p.gradient_accumulation_steps > 1:
        changes.update(train_batch_size=1, gradient_accumulation_steps=1)
        notes.append(f"ip2p_model: train_batch_size {p2p.train_batch_size} -> 1, gradient_accumulation_steps "
                     f"{p2p.gradient_accumulation_steps} -> 1 (an optimizer step is one sample instead of "
                     f"{p2p.train_batch_size} x {p2p.gradient_accumulation_steps})")
    if p2p.mixed_precision != "no":
        notes.append(f"ip2p_model: mixed_precision {p2p.mixed_precision} is resolved to fp32 by the trainer "
                     "(fp16 needs CUDA); not changed here")
    fits = need + HEADROOM_BYTES <= memory
    if not p2p.gradient_checkpointing and not fits:
        changes["gradient_checkpointing"] = True
    notes.append(f"ip2p_model: UNet gradient checkpointing {'off' if fits else 'ON'}: estimated "
                 f"{need / GIB:.1f} GiB of weights, gradients and AdamW state + {HEADROOM_BYTES / GIB:.0f} GiB "
                 f"headroom {'fit in' if fits else 'exceed'} {memory / GIB:.1f} GiB of memory")
    return changes, notes


def _pacnet_on_cpu(pac, cpu_batch: int = 2) -> tuple[dict, list[str]]:
    changes: dict[str, Any] = {}
    notes: list[str] = []
    if pac.batch_size > cpu_batch:
        changes["batch_size"] = cpu_batch
        line = f"pacnet: batch_size {pac.batch_size} -> {cpu_batch} clips"
        if pac.max_train_videos is not None:  # cut the videos so that it still takes the profile's steps
            steps = -(-pac.max_train_videos // pac.batch_size)
            changes["max_train_videos"] = steps * cpu_batch
            line += (f", max_train_videos {pac.max_train_videos} -> {steps * cpu_batch} (still {steps} optimizer "
                     "step(s) per epoch)")
        notes.append(f"{line}; progress_estimates infers in batches of {cpu_batch * 4} (4 x batch_size)")
    if pac.mixed_precision != "no":
        notes.append(f"pacnet: mixed_precision {pac.mixed_precision} kept (accelerate decides on the CPU)")
    return changes, notes


def cpu_adjustments(profile, *, cuda: Optional[bool] = None, memory_bytes: Optional[int] = None,
                    training_bytes: Optional[int] = None) -> tuple[Any, list[str]]:
    """The profile to rehearse on this machine and a line per change or note. With CUDA nothing
    changes; without it batch sizes come down and the UNet checkpoints its gradients when the
    memory estimate does not fit; models, learning rates, resolutions and steps never change."""
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        return profile, ["CUDA available: nothing changed (the profile's batch sizes and precision)"]
    memory = total_memory_bytes() if memory_bytes is None else memory_bytes
    need = unet_training_bytes() if training_bytes is None else training_bytes
    p2p_changes, notes = _pix2pix_on_cpu(profile.pix2pix_train, memory, need)
    pac_changes, pac_notes = _pacnet_on_cpu(profile.pacnet_train)
    s = profile.sampling
    notes += [*pac_notes, f"evaluation: {s.num_samples} samples in batches of {min(s.batch_size, s.num_samples)}, "
              f"dtype {s.dtype} (= float32 on the CPU), {s.num_inference_steps} denoising steps; unchanged"]
    return replace(profile, pix2pix_train=replace(profile.pix2pix_train, **p2p_changes),
                   pacnet_train=replace(profile.pacnet_train, **pac_changes)), notes


def profile_differences(base: Any, other: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, base value, other value) for every differing field, nested dataclasses too."""
    out: list[tuple[str, Any, Any]] = []
    for f in fields(base):
        a, b = getattr(base, f.name), getattr(other, f.name)
        if is_dataclass(a) and is_dataclass(b) and type(a) is type(b):
            out += profile_differences(a, b, f"{prefix}{f.name}.")
        elif a != b:
            out.append((f"{prefix}{f.name}", a, b))
    return out


def rehearsal_setup(cuda: Optional[bool] = None):
    """(the `rehearsal` profile's changes from `full`, the profile as this machine runs it, the CPU notes)."""
    from pecn_ml.profiles import full_profile, rehearsal_profile

    rehearsal = rehearsal_profile()
    changes = [f"{name}: {a!r} -> {b!r}" for name, a, b in profile_differences(full_profile(), rehearsal)
               if name != "name"]
    profile, notes = cpu_adjustments(rehearsal, cuda=cuda)
    return changes, profile, notes


# --- the report: one line and one row per step ---------------------------------------------------

@dataclass
class StepResult:
    """One step of the rehearsal, as the parent measured it and the step reported it."""

    step: str                               # asset name (or a setup step)
    partition: Optional[str] = None
    status: str = "ok"                      # ok | FAILED
    wall_s: float = 0.0
    parameters: Optional[int] = None
    parameters_source: str = ""             # "metadata" | "safetensors <path>" | ""
    peak_rss_bytes: Optional[int] = None    # max over the step process and its descendants
    cuda_peak_bytes: Optional[int] = None
    seconds_per_step: Optional[float] = None
    bytes_written: Optional[int] = None     # net: after minus before
    pruned_bytes: Optional[int] = None      # written, then deleted by the step (optimizer-state checkpoints)
    run_id: str = ""
    error: str = ""
    log: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.step}/{self.partition}" if self.partition else self.step


def _gib(n: Optional[int]) -> str:
    return f"{n / GIB:.2f}" if n is not None else "-"


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    sign, n = ("-" if n < 0 else ""), abs(n)
    unit, size = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if n >= s), ("B", None))
    return f"{sign}{n / size:.2f} {unit}" if size else f"{sign}{n} B"


def step_line(r: StepResult) -> str:
    """The line printed when a step ends."""
    params = f"{r.parameters:,} parameters ({r.parameters_source})" if r.parameters is not None else "no parameters"
    gpu = f", GPU peak {_gib(r.cuda_peak_bytes)} GiB" if r.cuda_peak_bytes is not None else ""
    pruned = f" (+{format_bytes(r.pruned_bytes)} written and pruned)" if r.pruned_bytes else ""
    return (f"{r.name}: {r.status} in {r.wall_s:.1f}s, {params}, peak RSS {_gib(r.peak_rss_bytes)} GiB{gpu}, "
            f"{_fmt(r.seconds_per_step, '.2f')} s/step, {format_bytes(r.bytes_written)} written{pruned}")


COLUMNS = ("step", "status", "wall s", "parameters", "source", "peak RSS GiB", "GPU peak GiB", "s/step", "written",
           "pruned")


def text_table(rows: list[tuple[str, ...]], left: tuple[int, ...]) -> str:
    """Fixed-width columns: the header, a rule, the rows; columns `left` flush left, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def format_table(results: list[StepResult]) -> str:
    """A fixed-width table of every step (text columns left, numbers right)."""
    return text_table([COLUMNS, *((r.name, r.status, f"{r.wall_s:.1f}", _fmt(r.parameters, ","),
                                   r.parameters_source.split(" ")[0] or "-", _gib(r.peak_rss_bytes),
                                   _gib(r.cuda_peak_bytes), _fmt(r.seconds_per_step, ".2f"),
                                   format_bytes(r.bytes_written), format_bytes(r.pruned_bytes)) for r in results)],
                      left=(0, 1, 4))


def report_json(results: list[StepResult], *, total_s: float, ok: bool, profile_changes: list[str],
                cpu_notes: list[str], env_notes: list[str], machine: dict) -> dict:
    """What `rehearsal_report.json` holds."""
    return {"ok": ok, "total_wall_s": round(total_s, 1), "machine": machine,
            "profile_changes_from_full": profile_changes, "cpu_adjustments": cpu_notes, "environment": env_notes,
            "steps": [{**{k: v for k, v in asdict(r).items() if k != "extra"}, **r.extra,
                       "name": r.name} for r in results]}


def _number(meta: dict, key: str, kind: type) -> Any:
    value = getattr(meta.get(key), "value", meta.get(key))
    try:
        return kind(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def step_measurements(meta: dict, handle: Any = None) -> dict:
    """The report's numbers from a materialisation's metadata (the parameter count else from the
    safetensors of the weights folder its handle names); None where the step has none."""
    from pecn_ml.utils.usage import safetensors_parameters

    out: dict[str, Any] = {"parameters": _number(meta, "parameters", int), "parameters_source": "metadata"}
    path = Path(handle.path) if getattr(handle, "path", None) else None
    if out["parameters"] is None:
        out["parameters_source"] = ""
        if path is not None and path.is_dir() and next(path.rglob("*.safetensors"), None) is not None:
            out.update(parameters=safetensors_parameters(path), parameters_source=f"safetensors {path}")
    out.update(cuda_peak_bytes=_number(meta, "cuda_peak_bytes", int), pruned_bytes=_number(meta, "pruned_bytes", int),
               seconds_per_step=_number(meta, "seconds_per_step", float))
    out["child_peak_rss_bytes"] = max(_number(meta, k, int) or 0
                                      for k in ("peak_rss_bytes", "peak_rss_children_bytes")) or None
    return out



def _main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/rehearsal_models", help="folder for the three models")
    args = parser.parse_args(argv)
    for name, n in rehearsal_param_counts().items():
        print(f"{name:>13}: {n:,} parameters")
    t0 = time.perf_counter()
    models = build_rehearsal_models(args.out)
    print(f"done in {time.perf_counter() - t0:.1f}s: {models}")


if __name__ == "__main__":
    _main()
