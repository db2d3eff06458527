"""GPU benchmark: our InstructPix2Pix training step vs a plain diffusers-example-style step.

    .venv/bin/python benchmarks/bench_pix2pix_gpu.py                 # CUDA, SD-1.5-sized, fp16, 224 px
    .venv/bin/python benchmarks/bench_pix2pix_gpu.py --tiny          # CPU smoke check, tiny models
    .venv/bin/python benchmarks/bench_pix2pix_gpu.py --device cpu --precision no --batch 1 \
        --steps 2 --warmup 1 --optimizer sgd                         # SD-sized on CPU (slow, ~8 GB)

Models: random weights in Stable Diffusion 1.5's shapes (UNet 320/640/1280/1280 with 8 input
channels, VAE 128/256/512/512, CLIP ViT-L/14 text encoder: 12 layers x 768), no download.
With --tiny: the tiny local pipeline of `pecn_ml.models.tiny`.

  reference  per step, as diffusers' train_instruct_pix2pix.py: VAE-encode the target
             (`latent_dist.sample()`) and the input (`.mode()`), tokenize + encode the prompts,
             re-encode the empty prompt for the dropout, UNet forward/backward, AdamW.
  ours       `pecn_ml.training.pix2pix.training_step` on cached VAE posteriors and prompt
             embeddings (`latent_cache.encode_dataset`-style, built once and timed apart), the
             empty prompt encoded once, the same UNet/optimizer/accelerate settings.

Both share one Accelerator (mixed precision) and one UNet; runs are interleaved, best of
--repeat. Prints steps/s, peak GPU memory and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pecn_ml.models.pix2pix import encode_prompts, tokenize_prompts  # noqa: E402
from pecn_ml.training.latent_cache import encode_pixels  # noqa: E402
from pecn_ml.utils.accel import make_accelerator  # noqa: E402
from pecn_ml.training.pix2pix import (LatentBatch, draw_step_randomness, step_generator,  # noqa: E402
                                      training_step)

PROMPT = "Generate a future frame of this action: pushing something from left to right"


def sd15_models(resolution: int, tok_dir: Path):
    """Randomly initialised modules in SD-1.5's shapes (InstructPix2Pix UNet: 8 input channels)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pecn_ml.models.tiny import build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(tok_dir)   # any CLIP BPE works for timing; ids < 49408
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=768))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    unet = UNet2DConditionModel(
        sample_size=resolution // 8, in_channels=8, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000)
    return tokenizer, text_encoder, vae, unet, scheduler


def tiny_models(tmp: Path):
    from pecn_ml.models.pix2pix import load_pix2pix_components
    from pecn_ml.models.tiny import build_tiny_models

    p = load_pix2pix_components(build_tiny_models(tmp / "tiny").pix2pix)
    return p.tokenizer, p.text_encoder, p.vae, p.unet, p.noise_scheduler


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny local models on the CPU (smoke check)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--precision", default=None, choices=["no", "fp16", "bf16"],
                    help="default: fp16 on CUDA, no on CPU")
    ap.add_argument("--resolution", type=int, default=None, help="default 224 (64 with --tiny)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=32, help="distinct frame pairs cycled through")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20, 4 with --tiny)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("fp16" if device.type == "cuda" else "no")
    res = args.resolution or (64 if args.tiny else 224)
    steps = args.steps or (4 if args.tiny else 20)
    accelerator = make_accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="bench_ip2p_gpu_") as tmp:
        tokenizer, text_encoder, vae, unet, scheduler = (
            tiny_models(Path(tmp)) if args.tiny else sd15_models(res, Path(tmp) / "tok"))
    for m in (vae, text_encoder):
        m.requires_grad_(False)
        m.to(device)
        if dtype != torch.float32:
            m.to(dtype=dtype)
        m.eval()
    unet.train()
    opt_cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.SGD
    optimizer = opt_cls(unet.parameters(), lr=1e-6)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    sf = float(vae.config.scaling_factor)
    n = max(args.pairs, args.batch)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(n, 2, 3, res, res, generator=g) * 2 - 1     # (N, input/target, 3, R, R)
    prompts = [f"{PROMPT} {i}" for i in range(n)]
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
            else None, "precision": precision, "resolution": res, "batch": args.batch,
            "tiny": args.tiny, "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1)}
    print(json.dumps(info), flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # ours: encode everything once (what latent_cache does), keep on the device
    sync()
    t = time.perf_counter()
    means, logvars, imgs = [], [], []
    for s in range(0, n, 8):
        m, lv = encode_pixels(vae, pixels[s:s + 8, 1].to(device))
        means.append(m), logvars.append(lv)
        imgs.append(encode_pixels(vae, pixels[s:s + 8, 0].to(device))[0])
    embeds = torch.cat([encode_prompts(tokenizer, text_encoder, prompts[s:s + 32])
                        for s in range(0, n, 32)])
    t_mean, t_logvar, i_mean = torch.cat(means), torch.cat(logvars), torch.cat(imgs)
    empty_once = encode_prompts(tokenizer, text_encoder, [""])
    sync()
    cache_s = time.perf_counter() - t

    def ours(i: int) -> None:
        idx = torch.arange(i * args.batch, (i + 1) * args.batch) % n
        batch = LatentBatch(t_mean[idx], t_logvar[idx], i_mean[idx], embeds[idx])
        draws = draw_step_randomness(batch.target_mean.shape, 1000, dtype=batch.target_mean.dtype,
                                     generator=step_generator(0, i, device), device=device)
        loss = training_step(unet, scheduler, batch, draws, empty_prompt_embeds=empty_once,
                             conditioning_dropout_prob=0.05, scaling_factor=sf)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    def reference(i: int) -> None:
        idx = torch.arange(i * args.batch, (i + 1) * args.batch) % n
        edited = pixels[idx, 1].to(device, dtype=dtype)
        original = pixels[idx, 0].to(device, dtype=dtype)
        input_ids = tokenize_prompts(tokenizer, [prompts[j] for j in idx.tolist()]).to(device)
        with torch.no_grad():
            latents = vae.encode(edited).latent_dist.sample() * sf
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, 1000, (bsz,), device=device).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            hidden = text_encoder(input_ids)[0]
            original_embeds = vae.encode(original).latent_dist.mode()
            u = torch.rand(bsz, device=device)
            null = text_encoder(tokenize_prompts(tokenizer, [""]).to(device))[0]  # every step
        hidden = torch.where((u < 0.1).reshape(bsz, 1, 1), null, hidden)
        image_mask = 1 - ((u >= 0.05).to(original_embeds.dtype) * (u < 0.15).to(original_embeds.dtype))
        original_embeds = image_mask.reshape(bsz, 1, 1, 1) * original_embeds
        pred = unet(torch.cat([noisy, original_embeds], dim=1), timesteps, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    results = {name: {"steps_per_s": 0.0, "peak_mem_GiB": None} for name in ("reference", "ours")}
    for name, fn in (("reference", reference), ("ours", ours)):
        for i in range(args.warmup):
            fn(i)
    for _ in range(args.repeat):
        for name, fn in (("reference", reference), ("ours", ours)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t = time.perf_counter()
            for i in range(steps):
                fn(i)
            sync()
            rate = steps / (time.perf_counter() - t)
            r = results[name]
            r["steps_per_s"] = round(max(r["steps_per_s"], rate), 3)
            if device.type == "cuda":
                r["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
            print(f"{name}: {rate:.3f} steps/s", flush=True)
    out = {**info, **results, "cache_build_s": round(cache_s, 3), "cache_pairs": n,
           "ratio": round(results["ours"]["steps_per_s"] / results["reference"]["steps_per_s"], 2)}
    print(f"ours {results['ours']['steps_per_s']} vs reference {results['reference']['steps_per_s']} "
          f"steps/s -> {out['ratio']}x ({device}, {precision}, {res} px, batch {args.batch}); "
          f"encoding {n} pairs once: {cache_s:.2f}s")
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
