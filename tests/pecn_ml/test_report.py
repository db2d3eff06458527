"""Excel workbook read back with openpyxl, Markdown tables, and the image helpers."""

from __future__ import annotations

import numpy as np
import openpyxl
import pytest

from pecn_ml.images import comparison_grid, load_png, save_png, stack_vertical
from pecn_ml.report import across_seeds, evaluation_row, markdown_summary, write_summary_workbook

SHA = "0123456789abcdef" * 4


def _eval_rows():
    rows = []
    for variant, target, progress in (("next1", 21, False), ("next1_progress", 21, True)):
        rows.append({"variant": variant, "model": f"instruct_pix2pix_224_{variant}", "eval_set": "basic",
                     "target_idx": target, "progress": progress, "n": 100,
                     "ssim_mean": 0.812345, "ssim_std": 0.0456, "psnr_mean": 24.5678, "psnr_std": 3.21,
                     "baseline_ssim": 0.799, "baseline_psnr": 23.9, "checkpoint_sha256": SHA})
    return rows


def _test_rows():
    base = {"comparison": "progress - plain", "target_idx": 21, "eval_set": "basic", "without": "next1",
            "with": "next1_progress",
            "n_paired": 100, "n_without": 100, "n_with": 100, "checkpoint_sha256_without": SHA,
            "checkpoint_sha256_with": SHA[::-1], "paired_reason": None, "welch_reason": None}
    return [
        {**base, "metric": "ssim", "mean_without": 0.81, "mean_with": 0.82, "mean_diff": 0.01,
         "ci95_low": 0.004, "ci95_high": 0.016, "t": 3.3, "df": 99.0, "p": 0.00123, "cohen_dz": 0.33,
         "welch_t": 1.2, "welch_df": 197.5, "welch_p": 0.23, "hedges_g": 0.17},
        {**base, "metric": "psnr", "mean_without": 24.5, "mean_with": 24.9, "mean_diff": 0.4,
         "ci95_low": float("nan"), "ci95_high": None, "t": float("nan"), "df": 99.0, "p": float("nan"),
         "cohen_dz": float("nan"), "paired_reason": "zero variance of the paired differences",
         "welch_t": 0.5, "welch_df": 190.0, "welch_p": 0.6, "hedges_g": 0.07},
        {**base, "comparison": "progress - shuffled", "target_idx": 25, "without": "next5_shuffled",
         "with": "next5_progress", "metric": "motion_psnr", "mean_without": 15.1, "mean_with": 15.95,
         "mean_diff": 0.85, "ci95_low": 0.31, "ci95_high": 1.39, "t": 3.1, "df": 99.0, "p": 0.0031,
         "cohen_dz": 0.31, "welch_t": 1.9, "welch_df": 196.0, "welch_p": 0.059, "hedges_g": 0.27},
        {**base, "comparison": "shuffled - plain", "target_idx": 25, "without": "next5", "with": "next5_shuffled",
         "metric": "motion_psnr", "n_paired": 0, "mean_diff": float("nan"), "p": float("nan"),
         "paired_reason": "no 'motion_psnr' in the results of next5: not tested",
         "welch_reason": "no 'motion_psnr' in the results of next5: not tested"},
    ]


def _sheet_dicts(ws):
    rows = list(ws.iter_rows())
    headers = [c.value for c in rows[0]]
    return headers, [{h: c for h, c in zip(headers, r)} for r in rows[1:]]


def test_workbook_contents_and_formats(tmp_path):
    path = write_summary_workbook(_eval_rows(), _test_rows(), tmp_path / "t_test_summary.xlsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t_test_summary.xlsx"]  # atomic: no temp left
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["evaluations", "t_tests"]

    headers, rows = _sheet_dicts(wb["evaluations"])
    for h in ("Variant", "Eval set", "Target frame", "Progress prompt", "n", "SSIM mean", "SSIM std",
              "SSIM (mean ± std)", "PSNR mean (dB)", "Copy-frame SSIM", "Copy-frame PSNR (dB)",
              "Checkpoint sha256"):
        assert h in headers
    assert len(rows) == 2
    r = rows[1]
    assert r["Variant"].value == "next1_progress" and r["Progress prompt"].value == "yes"
    assert r["SSIM mean"].value == pytest.approx(0.812345) and r["SSIM mean"].number_format == "0.0000"
    assert r["PSNR mean (dB)"].value == pytest.approx(24.5678) and r["PSNR mean (dB)"].number_format == "0.00"
    assert r["Copy-frame SSIM"].number_format == "0.0000" and r["Copy-frame PSNR (dB)"].number_format == "0.00"
    assert r["SSIM (mean ± std)"].value == "0.8123 ± 0.0456"
    assert r["PSNR dB (mean ± std)"].value == "24.57 ± 3.21"
    assert r["Checkpoint sha256"].value == SHA and r["n"].value == 100
    sha_col = headers.index("Checkpoint sha256")
    letter = openpyxl.utils.get_column_letter(sha_col + 1)
    assert wb["evaluations"].column_dimensions[letter].width >= 64  # a full sha is readable
    assert wb["evaluations"]["A1"].font.bold

    headers, rows = _sheet_dicts(wb["t_tests"])
    for h in ("Comparison (B - A)", "Target frame", "Eval set", "Metric", "Arm A", "Arm B", "Paired t", "Paired p",
              "Cohen's d_z", "Welch p", "Hedges' g", "95% CI low", "Checkpoint sha256 (A)", "Checkpoint sha256 (B)"):
        assert h in headers
    ssim_row, psnr_row = rows[:2]
    assert ssim_row["Paired p"].value == pytest.approx(0.00123) and ssim_row["Paired p"].number_format == "0.0000"
    assert ssim_row["Mean diff (B - A)"].number_format == "0.0000"  # SSIM row
    assert psnr_row["Mean diff (B - A)"].number_format == "0.00"    # PSNR row
    assert psnr_row["Paired t"].value is None and psnr_row["95% CI high"].value is None  # NaN -> blank
    assert "zero variance" in psnr_row["Paired: not computed because"].value
    assert psnr_row["Checkpoint sha256 (B)"].value == SHA[::-1]
    assert ssim_row["Comparison (B - A)"].value == "progress - plain" and ssim_row["Arm B"].value == "next1_progress"
    motion = rows[2]  # the control comparison on motion-region PSNR
    assert (motion["Comparison (B - A)"].value, motion["Arm A"].value, motion["Arm B"].value) == (
        "progress - shuffled", "next5_shuffled", "next5_progress")
    assert motion["Metric"].value == "motion_psnr" and motion["Mean diff (B - A)"].number_format == "0.00"
    assert motion["Mean diff (B - A)"].value == pytest.approx(0.85) and motion["Paired p"].value == pytest.approx(0.0031)


def test_workbook_keeps_extra_columns_and_replaces_file(tmp_path):
    path = tmp_path / "w.xlsx"
    path.write_bytes(b"old garbage")
    rows = [{**_eval_rows()[0], "note": "extra"}]
    write_summary_workbook(rows, [], path)
    wb = openpyxl.load_workbook(path)
    headers, data = _sheet_dicts(wb["evaluations"])
    assert headers[-1] == "note" and data[0]["note"].value == "extra"
    t_headers, t_rows = _sheet_dicts(wb["t_tests"])
    assert t_rows == [] and "Paired p" in t_headers


def test_evaluation_row_from_results():
    results = {"n": 3, "mean": {"ssim": 0.5, "psnr": 20.0}, "std": {"ssim": 0.1, "psnr": 2.0},
               "baseline_mean": {"ssim": 0.6, "psnr": 22.0}, "checkpoint_sha256": SHA,
               "config": {"target_idx": 25, "add_progress": True}}
    row = evaluation_row("next5_progress", "backforth", results, model="m")
    assert row["target_idx"] == 25 and row["progress"] is True and row["baseline_psnr"] == 22.0
    assert row["checkpoint_sha256"] == SHA and row["ssim_std"] == 0.1 and row["model"] == "m"


def test_markdown_summary_tables():
    md = markdown_summary(_eval_rows(), _test_rows())
    assert "### Evaluations" in md and "### t-tests" in md
    lines = md.splitlines()
    eval_line = next(line for line in lines if line.startswith("| next1_progress"))
    assert "0.8123 ± 0.0456" in eval_line and "24.57 ± 3.21" in eval_line
    ssim_line = next(line for line in lines if "| ssim |" in line)
    assert "0.0100 [0.0040, 0.0160]" in ssim_line and "0.0012" in ssim_line
    psnr_line = next(line for line in lines if "| psnr |" in line)
    assert "zero variance" in psnr_line and "–" in psnr_line
    assert "| Comparison |" in md and ssim_line.split("|")[2].strip() == "progress - plain"
    control = next(line for line in lines if "| progress - shuffled |" in line)
    assert "| motion_psnr |" in control and "0.85 [0.31, 1.39]" in control and "0.0031" in control  # PSNR: 2 digits
    untested = next(line for line in lines if "| shuffled - plain |" in line)
    assert untested.count("no 'motion_psnr' in the results of next5") == 1  # the same reason once
    old = markdown_summary([], [{k: v for k, v in r.items() if k != "comparison"} for r in _test_rows()[:1]])
    assert "| progress - plain |" in old  # rows of t_test_results.json v1 (no comparison key)
    # all table rows have the same number of cells as their header
    for block in md.split("\n\n"):
        table = [line for line in block.splitlines() if line.startswith("|")]
        if table:
            assert len({line.count(" | ") for line in table if not line.startswith("|---")}) == 1
    only_tests = markdown_summary([], _test_rows())
    assert "### Evaluations" not in only_tests and "### t-tests" in only_tests
    assert "No evaluations" in markdown_summary([], [])


# ----------------------------------------------------------------------------- images


def test_save_and_load_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = save_png(arr, tmp_path / "a" / "x.png")
    assert np.array_equal(load_png(path), arr)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_png(arr.astype(np.float32), tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_png(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="junk.png"):
        load_png(tmp_path / "junk.png")


def test_comparison_grid_layout():
    imgs = [np.full((32, 40, 3), v, np.uint8) for v in (10, 120, 230)]
    grid = comparison_grid(imgs, ["Input", "GT", "Output"], label_height=14, pad=2)
    assert grid.size == (3 * 40 + 4 * 2, 14 + 32 + 2)
    arr = np.asarray(grid)
    for i, v in enumerate((10, 120, 230)):
        x = 2 + i * 42
        assert (arr[14:46, x:x + 40] == v).all()  # each image pasted unchanged, in order
    label_strip = arr[:14]
    assert (label_strip < 128).any() and (label_strip == 255).mean() > 0.5  # dark text on white
    with pytest.raises(ValueError, match="one label per image"):
        comparison_grid(imgs, ["a"])
    with pytest.raises(ValueError, match="image 1"):
        comparison_grid([imgs[0], imgs[1][:20]], ["a", "b"])
    stacked = stack_vertical([grid, grid], pad=3)
    assert stacked.size == (grid.width, 2 * grid.height + 3)


def test_across_seeds_sheet_and_table(tmp_path):
    rows = [{**r, "seed": seed, "ssim_mean": r["ssim_mean"] + 0.01 * seed} for seed in (0, 1) for r in _eval_rows()]
    across = across_seeds(rows)
    assert len(across) == 2 and across[0]["n_seeds"] == 2 and across[0]["seeds"] == "0, 1"
    assert across[0]["ssim_mean"] == pytest.approx(0.817345)
    assert across[0]["ssim_sd"] == pytest.approx(np.std([0.812345, 0.822345], ddof=1))
    assert np.isnan(across_seeds(rows[:1])[0]["ssim_sd"])  # one seed: no spread
    baselines = [{"eval_set": "basic", "target_idx": 21, "n": 24, "ssim_mean": 0.98, "psnr_mean": 34.0}]
    path = write_summary_workbook(rows, _test_rows(), tmp_path / "t.xlsx", across=across, baselines=baselines)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["evaluations", "t_tests", "across_seeds", "copy_frame_baseline"]
    headers, data = _sheet_dicts(wb["across_seeds"])
    assert "SSIM: sd over seeds" in headers and len(data) == 2
    assert "Training seed" in _sheet_dicts(wb["evaluations"])[0]
    md = markdown_summary(rows, _test_rows(), across)
    assert "### Across training seeds (mean ± sd over seeds)" in md and "0.8173 ± 0.0071" in md


def _motion_results():
    def means(ssim, psnr, mpsnr, mmae):
        return {"ssim": ssim, "psnr": psnr, "motion_psnr": mpsnr, "motion_mae": mmae}

    return {"n": 24, "mean": means(0.707, 24.1, 19.81, 0.0612), "std": {"ssim": 0.05, "psnr": 1.5},
            "latent_copy_mean": means(0.737, 25.2, 21.12, 0.0544), "baseline_mean": means(0.9, 30.0, 27.07, 0.0301),
            "autoencoder_mean": means(0.8, 26.0, 25.5, 0.0402), "motion_fraction_mean": 0.0832,
            "checkpoint_sha256": SHA, "config": {"target_idx": 21, "add_progress": False}}


def test_evaluation_row_and_sheets_show_the_latent_copy_and_the_motion_region(tmp_path):
    row = {**evaluation_row("next1", "basic", _motion_results(), model="m"), "seed": 0}
    assert row["latent_copy_ssim"] == 0.737 and row["latent_copy_psnr"] == 25.2
    assert (row["motion_psnr"], row["latent_copy_motion_psnr"], row["baseline_motion_psnr"],
            row["autoencoder_motion_psnr"]) == (19.81, 21.12, 27.07, 25.5)
    assert (row["motion_mae"], row["latent_copy_motion_mae"], row["baseline_motion_mae"],
            row["autoencoder_motion_mae"]) == (0.0612, 0.0544, 0.0301, 0.0402)
    assert row["motion_fraction"] == 0.0832
    old = evaluation_row("next1", "basic", {k: v for k, v in _motion_results().items() if k != "latent_copy_mean"})
    assert old["latent_copy_ssim"] is None and old["latent_copy_motion_psnr"] is None  # blank, not an error

    across = across_seeds([row, {**row, "seed": 1, "motion_psnr": 20.81}])
    assert across[0]["latent_copy_ssim"] == pytest.approx(0.737) and across[0]["motion_psnr_mean"] == pytest.approx(20.31)
    baselines = [{"eval_set": "basic", "target_idx": 21, "n": 24, "ssim_mean": 0.9, "psnr_mean": 30.0,
                  "motion_psnr_mean": 27.07}]
    path = write_summary_workbook([row], [], tmp_path / "w.xlsx", across=across, baselines=baselines)
    wb = openpyxl.load_workbook(path)
    headers, data = _sheet_dicts(wb["evaluations"])
    assert headers[-1] == "Checkpoint sha256"  # every new key is a known column, none is an extra
    r = data[0]
    assert r["Latent copy SSIM"].value == pytest.approx(0.737) and r["Latent copy SSIM"].number_format == "0.0000"
    assert r["Latent copy motion PSNR (dB)"].value == pytest.approx(21.12)
    assert r["Motion PSNR (dB)"].number_format == "0.00" and r["Motion MAE"].value == pytest.approx(0.0612)
    assert r["VAE ceiling motion MAE"].value == pytest.approx(0.0402)
    assert r["Motion region (share of frame)"].value == pytest.approx(0.0832)
    assert _sheet_dicts(wb["across_seeds"])[1][0]["Latent copy motion PSNR (dB)"].value == pytest.approx(21.12)
    assert _sheet_dicts(wb["copy_frame_baseline"])[1][0]["Copy-frame motion PSNR (dB)"].value == pytest.approx(27.07)

    md = markdown_summary([row], [], across)
    line = next(x for x in md.splitlines() if x.startswith("| next1 | 0 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[8:10] == ["0.7370", "25.20"]                  # latent copy SSIM, PSNR
    assert cells[14:18] == ["19.81", "21.12", "27.07", "25.50"]  # motion PSNR: model, latent copy, copy, ceiling
    assert cells[18] == "0.0612 / 0.0544 / 0.0301 / 0.0402"
    assert "Latent copy: the input frame through the model's own autoencoder" in md
    across_line = next(x for x in md.splitlines() if x.startswith("| next1 | basic | 2 |"))
    assert "20.31 ± 0.71" in across_line and "| 21.12 |" in across_line


def test_prediction_table_puts_the_model_beside_latent_copy_with_paired_p():
    from pecn_ml.report import prediction_rows, prediction_table

    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        lc = 0.8 + 0.01 * rng.standard_normal()
        samples.append({"video_id": str(i), "ssim": lc + 0.02 + 0.001 * rng.standard_normal(), "latent_copy_ssim": lc,
                        "baseline_ssim": 0.9, "autoencoder_ssim": 0.85, "motion_psnr": 16.0 + i % 2,
                        "latent_copy_motion_psnr": 16.0 + i % 2, "baseline_motion_psnr": 18.0,
                        "autoencoder_motion_psnr": 19.0})
    rows = prediction_rows({(0, "next5", "basic"): {"samples": samples}})
    (row,) = rows
    assert row["n"] == 12 and row["ssim_vs_latent_copy"] == pytest.approx(0.02, abs=0.002)
    assert row["ssim_vs_latent_copy_p"] < 1e-6                    # a consistent gain is significant
    assert row["motion_psnr_vs_latent_copy"] == 0.0                # equal motion scores: no gain
    assert row["model_motion_psnr"] == pytest.approx(16.5) and row["autoencoder_motion_psnr"] == 19.0
    text = prediction_table({(0, "next5", "basic"): {"samples": samples}},
                            [{"comparison": "progress - shuffled", "target_idx": 25, "eval_set": "basic",
                              "seed": 0, "metric": "motion_psnr", "n_paired": 12, "mean_diff": 0.4, "p": 0.03},
                             {"comparison": "progress - plain", "target_idx": 25, "eval_set": "basic",
                              "seed": 0, "metric": "psnr", "n_paired": 12, "mean_diff": 0.1, "p": 0.5}])
    assert "next5" in text and "progress - shuffled" in text and "0.030" in text
    assert "progress - plain" not in text                          # only SSIM and motion PSNR tests
