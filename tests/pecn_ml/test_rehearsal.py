"""The rehearsal: the real architectures' parameter counts (meta device, no weights), the folder
builders at small sizes (same layout as the tiny pipeline, loadable by the real loaders), the
rehearsal profile (the full one with smaller run sizes), the CPU adjustments (batch sizes only), and
the report on fake results."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch

from pecn_ml.models.pix2pix import load_pix2pix_components
from pecn_ml.models.tiny import build_tiny_pix2pix
from pecn_ml.profiles import PROFILES, full_profile, get_profile, rehearsal_profile
from pecn_ml.rehearsal import (CLIP_B32_TEXT, CLIP_L14_TEXT, GIB, RESNET50, SD15_UNET, SD_VAE, StepResult,
                               build_clip_text_folder, build_pix2pix_folder, build_resnet_folder, cpu_adjustments,
                               format_table, profile_differences, rehearsal_param_counts, report_json, step_line,
                               step_measurements, unet_training_bytes)

# The published sizes: SD 1.5's UNet has 859,520,964 parameters with 4 input channels; the
# InstructPix2Pix UNet adds 4 x 320 x 3 x 3 conv_in weights. SD VAE, CLIP ViT-L/14 text model,
# ResNet-50 without its classifier, CLIP ViT-B/32 text model.
EXPECTED = {"unet": 859_520_964 + 4 * 320 * 9, "vae": 83_653_863, "text_encoder": 123_060_480,
            "resnet": 23_508_032, "clip_text": 63_165_952}

SMALL_UNET = dict(SD15_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32,
                  norm_num_groups=8, attention_head_dim=4, layers_per_block=1, sample_size=8)
SMALL_VAE = dict(SD_VAE, block_out_channels=(8, 16, 16, 16), norm_num_groups=8, layers_per_block=1)
SMALL_TEXT = dict(CLIP_L14_TEXT, vocab_size=2048, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=2, projection_dim=32)


def test_parameter_counts_are_the_real_models():
    counts = rehearsal_param_counts()
    assert counts == EXPECTED
    assert all(isinstance(v, int) for v in counts.values())


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_pix2pix_folder_is_laid_out_like_the_pipeline_and_loads(tmp_path):
    folder = build_pix2pix_folder(tmp_path / "ip2p", unet_config=SMALL_UNET, vae_config=SMALL_VAE,
                                  text_config=SMALL_TEXT)
    reference = build_tiny_pix2pix(tmp_path / "tiny")
    assert _files(folder) == _files(reference)
    index = json.loads((folder / "model_index.json").read_text())
    assert index == {**json.loads((reference / "model_index.json").read_text()),
                     "_diffusers_version": index["_diffusers_version"]}
    parts = load_pix2pix_components(folder)
    assert not parts.widened and parts.unet.config.in_channels == 8
    assert parts.unet.dtype == torch.float32
    ids = parts.tokenizer(["generate a future frame"], padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    assert int(ids.max()) < SMALL_TEXT["vocab_size"]
    assert parts.text_encoder.config.eos_token_id == parts.tokenizer.eos_token_id
    hidden = parts.text_encoder(ids).last_hidden_state                    # (1, 77, 32)
    latents = torch.randn(1, 8, 8, 8)
    out = parts.unet(latents, torch.tensor([10]), hidden).sample          # (1, 4, 8, 8)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_pacnet_backbone_folders_load_in_pacnet(tmp_path):
    from pecn_ml.models.pacnet import PacNet, PacNetConfig

    resnet = build_resnet_folder(tmp_path / "resnet-50",
                                 config=dict(RESNET50, hidden_sizes=[16, 32, 32, 64], embedding_size=8))
    clip = build_clip_text_folder(tmp_path / "clip", text_config=SMALL_TEXT)
    assert {"config.json", "model.safetensors"} <= _files(resnet)
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= _files(clip)
    model = PacNet(PacNetConfig.tiny(resnet, clip, hidden_dim=32, num_frames=4, heads=4))
    frames = torch.randint(0, 256, (2, 4, 24, 24, 3), dtype=torch.uint8)
    ids, mask = model.tokenize(["pushing something", "dropping something"])
    out = model(model.prepare_frames(frames), ids, mask)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert CLIP_B32_TEXT["hidden_size"] == 512 and CLIP_B32_TEXT["num_hidden_layers"] == 12


# What the rehearsal may change: where things go, how much data, how long it trains and samples.
RUN_SIZE_FIELDS = {
    "name", "data_dir", "outputs_dir", "results_dir", "synthetic", "resolutions",
    "filter.train_per_task", "filter.val_per_task",
    "pix2pix_train.max_train_steps", "pix2pix_train.checkpointing_steps", "pix2pix_train.validation_epochs",
    "pix2pix_train.num_validation_samples", "pix2pix_train.validation_inference_steps",
    "pacnet_train.epochs", "pacnet_train.max_train_videos", "pacnet_train.max_val_videos",
    "sampling.num_samples", "sampling.num_inference_steps",
}
# What the CPU may change on top: batch sizes (and the videos that keep the number of steps), memory.
CPU_FIELDS = {"pix2pix_train.train_batch_size", "pix2pix_train.gradient_accumulation_steps",
              "pix2pix_train.gradient_checkpointing", "pacnet_train.batch_size", "pacnet_train.max_train_videos"}


def test_rehearsal_differs_from_full_only_in_run_sizes():
    full, rehearsal = full_profile(), rehearsal_profile()
    changed = {name for name, _, _ in profile_differences(full, rehearsal)}
    assert changed <= RUN_SIZE_FIELDS, changed - RUN_SIZE_FIELDS
    assert get_profile("rehearsal") == rehearsal and PROFILES["rehearsal"] is rehearsal_profile
    # the models, resolution, precision and hyper-parameters of the real run
    assert rehearsal.standins is None and rehearsal.requires_gpu
    assert rehearsal.pix2pix_resolution == rehearsal.pacnet_resolution == 224 and rehearsal.resolutions == (224,)
    for name in ("learning_rate", "lr_scheduler", "mixed_precision", "train_batch_size", "resolution",
                 "gradient_accumulation_steps", "conditioning_dropout_prob", "seed", "gradient_checkpointing"):
        assert getattr(rehearsal.pix2pix_train, name) == getattr(full.pix2pix_train, name), name
    for name in ("lr", "batch_size", "weight_decay", "backbone_lr_mult", "mixed_precision", "seed"):
        assert getattr(rehearsal.pacnet_train, name) == getattr(full.pacnet_train, name), name
    for name in ("input_idx", "guidance_scale", "image_guidance_scale", "seed", "dtype", "batch_size"):
        assert getattr(rehearsal.sampling, name) == getattr(full.sampling, name), name
    # a couple of optimizer steps, two samples per evaluation, a handful of videos at SSv2's size
    assert rehearsal.pix2pix_train.max_train_steps == 2 and rehearsal.sampling.num_samples == 2
    assert rehearsal.pacnet_train.epochs == 1
    assert rehearsal.pacnet_train.max_train_videos // rehearsal.pacnet_train.batch_size == 2
    s = rehearsal.synthetic
    assert len(s.templates) == 4 and s.task_train_per_template * 4 <= 16 and (s.min_width, s.max_width) == (320, 427)
    assert rehearsal.outputs_dir != full.outputs_dir and rehearsal.data_dir != full.data_dir


def test_cpu_adjustments_change_batch_sizes_only_and_say_so():
    profile = rehearsal_profile()
    adjusted, notes = cpu_adjustments(profile, cuda=False, memory_bytes=24 * GIB, training_bytes=14 * GIB)
    changed = {name for name, _, _ in profile_differences(profile, adjusted)}
    assert changed == CPU_FIELDS - {"pix2pix_train.gradient_checkpointing"}
    assert (adjusted.pix2pix_train.train_batch_size, adjusted.pix2pix_train.gradient_accumulation_steps) == (1, 1)
    assert adjusted.pacnet_train.batch_size == 2
    # still two PAC-Net steps per epoch
    assert adjusted.pacnet_train.max_train_videos // adjusted.pacnet_train.batch_size == 2
    text = "\n".join(notes)
    assert "train_batch_size 4 -> 1" in text and "gradient_accumulation_steps 4 -> 1" in text
    assert "batch_size 8 -> 2" in text and "max_train_videos 16 -> 4" in text
    assert "fp16 is resolved to fp32" in text and "gradient checkpointing off" in text
    # models and hyper-parameters untouched
    for f in ("learning_rate", "mixed_precision", "resolution", "max_train_steps"):
        assert getattr(adjusted.pix2pix_train, f) == getattr(profile.pix2pix_train, f)
    assert (adjusted.standins, adjusted.pix2pix_resolution, adjusted.sampling) == \
        (profile.standins, profile.pix2pix_resolution, profile.sampling)


def test_cpu_adjustments_turn_on_checkpointing_when_memory_is_short():
    adjusted, notes = cpu_adjustments(rehearsal_profile(), cuda=False, memory_bytes=16 * GIB,
                                      training_bytes=14 * GIB)
    assert adjusted.pix2pix_train.gradient_checkpointing
    assert any("gradient checkpointing ON" in n and "16.0 GiB" in n for n in notes)


def test_cpu_adjustments_change_nothing_on_cuda():
    profile = rehearsal_profile()
    adjusted, notes = cpu_adjustments(profile, cuda=True)
    assert adjusted == profile and len(notes) == 1 and "nothing changed" in notes[0]


def test_training_memory_estimate_counts_weights_gradients_and_adam():
    counts = {"unet": 1000, "vae": 10, "text_encoder": 5}
    assert unet_training_bytes(counts) == 16 * 1000 + 8 * 15


def test_measurements_from_metadata_or_safetensors(tmp_path):
    from safetensors.torch import save_file
    import torch

    meta = {"parameters": 859_520_964, "seconds_per_step": 12.5, "cuda_peak_bytes": 3 * GIB,
            "peak_rss_bytes": 2 * GIB, "peak_rss_children_bytes": 0, "pruned_bytes": 10}
    m = step_measurements(meta)
    assert (m["parameters"], m["parameters_source"], m["seconds_per_step"], m["cuda_peak_bytes"],
            m["child_peak_rss_bytes"], m["pruned_bytes"]) == (859_520_964, "metadata", 12.5, 3 * GIB, 2 * GIB, 10)

    folder = tmp_path / "weights"
    folder.mkdir()
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(folder / "model.safetensors"))
    handle = type("Handle", (), {"path": str(folder)})()
    m = step_measurements({}, handle)
    assert m["parameters"] == 17 and m["parameters_source"] == f"safetensors {folder}"
    assert m["seconds_per_step"] is None and m["child_peak_rss_bytes"] is None
    json_handle = type("Handle", (), {"path": str(tmp_path / "results.json")})()
    assert step_measurements({}, json_handle)["parameters"] is None


def fake_results() -> list[StepResult]:
    return [
        StepResult("rehearsal_models", wall_s=37.6, parameters=1_152_973_984,
                   parameters_source="safetensors outputs/rehearsal_models", peak_rss_bytes=int(4.4 * GIB),
                   bytes_written=4_610_000_000),
        StepResult("ip2p_model", "42|next1", wall_s=300.0, parameters=859_520_964, parameters_source="metadata",
                   peak_rss_bytes=16 * GIB, seconds_per_step=25.0, bytes_written=4_300_000_000,
                   pruned_bytes=10_300_000_000),
        StepResult("evaluation", "42|next1", status="FAILED", wall_s=3.0, error="boom", log="x.log"),
    ]


def test_step_line_and_table_print_every_measurement():
    ok, trained, failed = fake_results()
    line = step_line(trained)
    assert line.startswith("ip2p_model/42|next1: ok in 300.0s")
    assert "859,520,964 parameters (metadata)" in line and "peak RSS 16.00 GiB" in line
    assert "25.00 s/step" in line and "4.30 GB written (+10.30 GB written and pruned)" in line
    assert "GPU peak" not in line and "no parameters" in step_line(failed)
    table = format_table(fake_results()).splitlines()
    assert table[0].split()[:2] == ["step", "status"] and set(table[1]) <= {"-", " "}
    assert "1,152,973,984" in table[2] and "safetensors" in table[2] and "4.40" in table[2]
    assert "FAILED" in table[4] and "evaluation/42|next1" in table[4]
    assert len({len(row.rstrip()) <= len(table[1]) for row in table}) == 1


def test_report_json_holds_steps_and_totals():
    report = report_json(fake_results(), total_s=340.04, ok=False, profile_changes=["a: 1 -> 2"],
                         cpu_notes=["n"], env_notes=["PECN_ALLOW_CPU=1"], machine={"cpus": 2})
    text = json.loads(json.dumps(report))
    assert text["ok"] is False and text["total_wall_s"] == 340.0
    assert [s["name"] for s in text["steps"]] == ["rehearsal_models", "ip2p_model/42|next1", "evaluation/42|next1"]
    assert text["steps"][1]["parameters"] == 859_520_964 and text["steps"][2]["error"] == "boom"
    assert {f.name for f in fields(StepResult)} - {"extra"} <= set(text["steps"][0])
