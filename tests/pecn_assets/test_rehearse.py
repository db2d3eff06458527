"""`make rehearse` without running it: the rehearsal profile is the full one with smaller run
sizes, the CPU adjustments change batch sizes only, and the report logic works on fake results."""

import json
from dataclasses import fields

import pytest

from pecn_assets import rehearse
from pecn_assets.rehearse import (StepResult, cpu_adjustments, format_table, profile_differences,
                                  report_json, step_line, step_measurements)
from pecn_ml.profiles import PROFILES, full_profile, get_profile, rehearsal_profile

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
GIB = 2 ** 30


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
    assert rehearse.unet_training_bytes(counts) == 16 * 1000 + 8 * 15


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


def test_bytes_written_leaves_out_the_rehearsals_own_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"x" * 100)
    (tmp_path / rehearse.LOGS_DIR).mkdir()
    (tmp_path / rehearse.LOGS_DIR / "a.log").write_bytes(b"x" * 1000)
    (tmp_path / (rehearse.HOME_PREFIX + "abc")).mkdir()
    (tmp_path / (rehearse.HOME_PREFIX + "abc") / "runs.db").write_bytes(b"x" * 1000)
    assert rehearse.tree_bytes([tmp_path, tmp_path / "missing"], rehearse._excluded) == 100


@pytest.mark.parametrize("cuda", [False, True])
def test_the_rehearsal_graph_builds_with_local_model_folders(tmp_path, cuda):
    """The definitions the steps materialise: every asset of the full graph, one frame-cache
    partition, the local folders in place of the hub names."""
    import dagster as dg

    from pecn_assets.demo import ORDER, plan
    from pecn_assets.partitions import add_seeds, deployment_seeds

    profile, _ = cpu_adjustments(rehearsal_profile(), cuda=cuda, memory_bytes=64 * GIB, training_bytes=GIB)
    defs = rehearse.rehearsal_definitions(profile, tmp_path / "models")
    instance = dg.DagsterInstance.ephemeral()
    add_seeds(instance, deployment_seeds(defs))
    steps = plan(defs, instance)
    assert [a for a, _ in steps] == list(ORDER)
    assert dict(steps)["frame_cache"] == ["224"] and len(dict(steps)["ip2p_model"]) == 6  # six variants
    models = defs.resources["models"]
    assert models.pix2pix == str((tmp_path / "models" / "instruct-pix2pix").absolute())
    assert models.clip_text.endswith("clip-vit-base-patch32") and models.resnet.endswith("resnet-50")
