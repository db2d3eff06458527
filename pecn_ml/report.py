"""The seed's t_test_summary.xlsx (pandas + openpyxl), the same tables as Markdown, and the demo's table.

Rows are dicts: evaluation rows (`evaluation_row`, keys of `EVAL_COLUMNS`; one per variant x eval
set [x seed]), rows over seeds (`across_seeds`), t-test rows (`pecn_ml.stats`) and copy-frame
baseline rows. Unknown keys become extra columns at the end; missing keys are blank cells.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

SSIM_FMT, PSNR_FMT, P_FMT, STAT_FMT, INT_FMT, DF_FMT = "0.0000", "0.00", "0.0000", "0.000", "0", "0.0"


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Optional[str] = None   # Excel number format; "metric" = SSIM_FMT or PSNR_FMT by the row's metric
    width: int = 12             # at least len(header) + 2 in the sheet


# each method's motion-region columns: model, latent copy, copy-frame, ceiling
MOTION_NAMES = {"": "Motion", "latent_copy_": "Latent copy motion", "baseline_": "Copy-frame motion",
                "autoencoder_": "VAE ceiling motion"}
MOTION_PREFIXES = tuple(MOTION_NAMES)

EVAL_COLUMNS = (
    Column("variant", "Variant", None, 16),
    Column("seed", "Training seed", INT_FMT, 9),
    Column("model", "Model", None, 36),
    Column("eval_set", "Eval set", None, 10),
    Column("target_idx", "Target frame", INT_FMT, 12),
    Column("progress", "Progress prompt", None, 15),
    Column("n", "n", INT_FMT, 6),
    Column("ssim_mean", "SSIM mean", SSIM_FMT, 11),
    Column("ssim_std", "SSIM std", SSIM_FMT, 11),
    Column("ssim_text", "SSIM (mean ± std)", None, 18),
    Column("psnr_mean", "PSNR mean (dB)", PSNR_FMT, 15),
    Column("psnr_std", "PSNR std (dB)", PSNR_FMT, 14),
    Column("psnr_text", "PSNR dB (mean ± std)", None, 20),
    Column("baseline_ssim", "Copy-frame SSIM", SSIM_FMT, 16),
    Column("baseline_psnr", "Copy-frame PSNR (dB)", PSNR_FMT, 20),
    Column("autoencoder_ssim", "VAE ceiling SSIM", SSIM_FMT, 17),
    Column("autoencoder_psnr", "VAE ceiling PSNR (dB)", PSNR_FMT, 21),
    Column("latent_copy_ssim", "Latent copy SSIM", SSIM_FMT, 17),
    Column("latent_copy_psnr", "Latent copy PSNR (dB)", PSNR_FMT, 21),
    *(Column(f"{p}motion_psnr", f"{name} PSNR (dB)", PSNR_FMT) for p, name in MOTION_NAMES.items()),
    *(Column(f"{p}motion_mae", f"{name} MAE", SSIM_FMT) for p, name in MOTION_NAMES.items()),
    Column("motion_fraction", "Motion region (share of frame)", SSIM_FMT, 16),
    Column("checkpoint_sha256", "Checkpoint sha256", None, 66),
)

# t-test rows: arm A in the "without" keys, arm B in the "with" keys, difference B - A (pecn_ml.stats)
T_TEST_COLUMNS = (
    Column("seed", "Training seed", None, 12),
    Column("comparison", "Comparison (B - A)", None, 20),
    Column("target_idx", "Target frame", INT_FMT, 12),
    Column("eval_set", "Eval set", None, 10),
    Column("metric", "Metric", None, 12),
    Column("without", "Arm A", None, 16),
    Column("with", "Arm B", None, 16),
    Column("n_paired", "n paired", INT_FMT, 9),
    Column("mean_without", "Mean A", "metric", 13),
    Column("mean_with", "Mean B", "metric", 11),
    Column("mean_diff", "Mean diff (B - A)", "metric", 25),
    Column("ci95_low", "95% CI low", "metric", 11),
    Column("ci95_high", "95% CI high", "metric", 11),
    Column("t", "Paired t", STAT_FMT, 10),
    Column("df", "Paired df", DF_FMT, 10),
    Column("p", "Paired p", P_FMT, 10),
    Column("cohen_dz", "Cohen's d_z", STAT_FMT, 12),
    Column("paired_reason", "Paired: not computed because", None, 28),
    Column("welch_t", "Welch t", STAT_FMT, 10),
    Column("welch_df", "Welch df", DF_FMT, 10),
    Column("welch_p", "Welch p", P_FMT, 10),
    Column("hedges_g", "Hedges' g", STAT_FMT, 10),
    Column("welch_mean_diff", "Welch mean diff", "metric", 15),
    Column("welch_ci95_low", "Welch 95% CI low", "metric", 16),
    Column("welch_ci95_high", "Welch 95% CI high", "metric", 17),
    Column("welch_reason", "Welch: not computed because", None, 28),
    Column("n_without", "n A", INT_FMT, 10),
    Column("n_with", "n B", INT_FMT, 8),
    Column("checkpoint_sha256_without", "Checkpoint sha256 (A)", None, 66),
    Column("checkpoint_sha256_with", "Checkpoint sha256 (B)", None, 66),
    Column("n_seeds", "Seeds", INT_FMT, 7),
    Column("seed_mean_diff_mean", "Mean diff: mean over seeds", "metric", 16),
    Column("seed_mean_diff_sd", "Mean diff: sd over seeds", "metric", 16),
)

ACROSS_COLUMNS = (
    Column("variant", "Variant", None, 16),
    Column("eval_set", "Eval set", None, 10),
    Column("target_idx", "Target frame", INT_FMT, 12),
    Column("progress", "Progress prompt", None, 15),
    Column("n_seeds", "Seeds", INT_FMT, 7),
    Column("seeds", "Training seeds", None, 16),
    Column("ssim_mean", "SSIM: mean over seeds", SSIM_FMT, 14),
    Column("ssim_sd", "SSIM: sd over seeds", SSIM_FMT, 14),
    Column("psnr_mean", "PSNR: mean over seeds (dB)", PSNR_FMT, 16),
    Column("psnr_sd", "PSNR: sd over seeds (dB)", PSNR_FMT, 16),
    Column("baseline_ssim", "Copy-frame SSIM", SSIM_FMT, 16),
    Column("autoencoder_ssim", "VAE ceiling SSIM", SSIM_FMT, 17),
    Column("latent_copy_ssim", "Latent copy SSIM", SSIM_FMT, 17),
    Column("motion_psnr_mean", "Motion PSNR: mean over seeds (dB)", PSNR_FMT, 18),
    Column("motion_psnr_sd", "Motion PSNR: sd over seeds (dB)", PSNR_FMT, 18),
    Column("latent_copy_motion_psnr", "Latent copy motion PSNR (dB)", PSNR_FMT, 20),
    Column("baseline_motion_psnr", "Copy-frame motion PSNR (dB)", PSNR_FMT, 20),
)

BASELINE_COLUMNS = (
    Column("eval_set", "Eval set", None, 10),
    Column("target_idx", "Target frame", INT_FMT, 12),
    Column("n", "n", INT_FMT, 6),
    Column("ssim_mean", "Copy-frame SSIM", SSIM_FMT, 16),
    Column("psnr_mean", "Copy-frame PSNR (dB)", PSNR_FMT, 20),
    Column("motion_psnr_mean", "Copy-frame motion PSNR (dB)", PSNR_FMT, 20),
)


def _num(v: Any) -> Optional[float]:
    """A finite float, or None (missing, None, NaN, inf, non-numbers)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pm(mean: Any, std: Any, digits: int) -> Optional[str]:
    m, s = _num(mean), _num(std)
    if m is None:
        return None
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None else f"{m:.{digits}f}"


def evaluation_row(variant: str, eval_set: str, results: Mapping[str, Any], *, model: str = "",
                   target_idx: Optional[int] = None, progress: Optional[bool] = None) -> dict[str, Any]:
    """One evaluations-sheet row from an `evaluate_model` results dict."""
    cfg = results.get("config", {})
    means = {p: results.get(f"{p}mean", {}) for p in MOTION_PREFIXES}  # the model's and each reference's
    return {"variant": variant, "model": model, "eval_set": eval_set,
            "target_idx": cfg.get("target_idx") if target_idx is None else target_idx,
            "progress": cfg.get("add_progress") if progress is None else progress,
            "n": results.get("n"),
            **{f"{m}_{s}": results[s][m] for m in ("ssim", "psnr") for s in ("mean", "std")},
            "baseline_ssim": results["baseline_mean"]["ssim"], "baseline_psnr": results["baseline_mean"]["psnr"],
            **{f"{p}{m}": means[p].get(m) for p in ("autoencoder_", "latent_copy_") for m in ("ssim", "psnr")},
            **{f"{p}{m}": means[p].get(m) for p in MOTION_PREFIXES for m in ("motion_psnr", "motion_mae")},
            "motion_fraction": results.get("motion_fraction_mean"),
            "checkpoint_sha256": results.get("checkpoint_sha256")}


def across_seeds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, eval set): mean and sd (ddof=1; NaN for one seed) over seeds of each seed's
    means; the references averaged likewise."""
    import numpy as np

    def sd(v: list[float]) -> float:
        return np.std(v, ddof=1) if len(v) > 1 else float("nan")

    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("variant"), r.get("eval_set")), []).append(r)
    out = []
    for (variant, eval_set), rs in groups.items():
        def stat(key: str, fn=np.mean) -> float:
            vals = [v for v in (_num(r.get(key)) for r in rs) if v is not None]
            return float(fn(vals)) if vals else float("nan")
        out.append({"variant": variant, "eval_set": eval_set, "target_idx": rs[0].get("target_idx"),
                    "progress": rs[0].get("progress"), "n_seeds": len(rs),
                    "seeds": ", ".join(str(r.get("seed")) for r in rs),
                    "ssim_mean": stat("ssim_mean"), "ssim_sd": stat("ssim_mean", sd),
                    "psnr_mean": stat("psnr_mean"), "psnr_sd": stat("psnr_mean", sd),
                    **{k: stat(k) for k in ("baseline_ssim", "autoencoder_ssim", "latent_copy_ssim")},
                    "motion_psnr_mean": stat("motion_psnr"), "motion_psnr_sd": stat("motion_psnr", sd),
                    **{k: stat(k) for k in ("latent_copy_motion_psnr", "baseline_motion_psnr")}})
    return out


def _with_text(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out.setdefault("ssim_text", _pm(row.get("ssim_mean"), row.get("ssim_std"), 4))
    out.setdefault("psnr_text", _pm(row.get("psnr_mean"), row.get("psnr_std"), 2))
    if isinstance(out.get("progress"), bool):
        out["progress"] = "yes" if out["progress"] else "no"
    return out


def _frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]):
    """DataFrame with the known columns first (in order), then any extra keys; plus the columns used."""
    import pandas as pd

    known = [c.key for c in columns]
    extra = dict.fromkeys(k for r in rows for k in r if k not in known)  # in order of first appearance
    cols = list(columns) + [Column(k, k, None, max(12, len(k) + 2)) for k in extra]
    data = [[_cell(r.get(c.key)) for c in cols] for r in rows]
    return pd.DataFrame(data, columns=[c.header for c in cols]), cols


def _cell(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple, dict)):
        return str(v)
    return v


def _format_sheet(ws, rows: Sequence[Mapping[str, Any]], cols: Sequence[Column]) -> None:
    from openpyxl.styles import Alignment, Font
    from openpyxl.utils import get_column_letter

    for j, c in enumerate(cols, start=1):
        letter = get_column_letter(j)
        ws.column_dimensions[letter].width = max(c.width, len(c.header) + 2)
        head = ws.cell(row=1, column=j)
        head.font = Font(bold=True)
        head.alignment = Alignment(wrap_text=True, vertical="top")
        for i, r in enumerate(rows, start=2):
            fmt = c.fmt
            if fmt == "metric":
                fmt = PSNR_FMT if str(r.get("metric", "")).lower().endswith("psnr") else SSIM_FMT
            if fmt is not None:
                ws.cell(row=i, column=j).number_format = fmt
    ws.freeze_panes = "A2"


def write_summary_workbook(evaluations: Sequence[Mapping[str, Any]], t_tests: Sequence[Mapping[str, Any]],
                           path: str | os.PathLike, *, across: Optional[Sequence[Mapping[str, Any]]] = None,
                           baselines: Optional[Sequence[Mapping[str, Any]]] = None) -> Path:
    """Write the workbook atomically: sheets "evaluations" and "t_tests", plus "across_seeds" and
    "copy_frame_baseline" when given, with headers, widths and number formats."""
    import pandas as pd

    from pecn_ml.utils.files import atomic_path

    path = Path(path)
    sheets = [("evaluations", [_with_text(r) for r in evaluations], EVAL_COLUMNS), ("t_tests", t_tests, T_TEST_COLUMNS),
              ("across_seeds", across, ACROSS_COLUMNS), ("copy_frame_baseline", baselines, BASELINE_COLUMNS)]
    with atomic_path(path) as tmp:
        with pd.ExcelWriter(tmp, engine="openpyxl") as xw:
            for name, rows, columns in (s for s in sheets if s[1] is not None):
                df, cols = _frame(rows, columns)
                df.to_excel(xw, sheet_name=name, index=False)
                _format_sheet(xw.sheets[name], rows, cols)
    return path


# ----------------------------------------------------------------------------- Markdown


def _fmt(v: Any, digits: int, missing: str = "-") -> str:
    x = _num(v)
    return missing if x is None else f"{x:.{digits}f}"


def _md(v: Any, digits: Optional[int] = None) -> str:
    if digits is not None:
        return _fmt(v, digits, "–")
    if v is None:
        return "–"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_summary(evaluations: Sequence[Mapping[str, Any]], t_tests: Sequence[Mapping[str, Any]],
                     across: Sequence[Mapping[str, Any]] = ()) -> str:
    """Markdown tables of the evaluations, the means over seeds and the t-tests (empty ones left out)."""
    parts = []
    if evaluations:
        rows = []
        for r in evaluations:
            r = _with_text(r)
            rows.append([*(_md(r.get(k)) for k in ("variant", "seed", "eval_set", "target_idx", "progress", "n",
                                                   "ssim_text", "psnr_text")),
                         *(_md(r.get(k + m), 4 if m == "ssim" else 2) for k in MOTION_PREFIXES[1:]
                           for m in ("ssim", "psnr")),
                         *(_md(r.get(f"{k}motion_psnr"), 2) for k in MOTION_PREFIXES),
                         " / ".join(_md(r.get(f"{k}motion_mae"), 4) for k in MOTION_PREFIXES)])
        parts.append("### Evaluations\n\n" + _table(
            ["Variant", "Seed", "Eval set", "Target", "Progress", "n", "SSIM", "PSNR (dB)", "Latent copy SSIM",
             "Latent copy PSNR", "Copy-frame SSIM", "Copy-frame PSNR", "VAE ceiling SSIM", "VAE ceiling PSNR",
             "Motion PSNR", "Latent copy motion PSNR", "Copy-frame motion PSNR", "VAE ceiling motion PSNR",
             "Motion MAE (model / latent copy / copy-frame / ceiling)"], rows)
            + "\n\nCopy-frame: the input frame unchanged (what a model must beat). Latent copy: the input "
              "frame through the model's own autoencoder (what a model that only learned to copy scores). "
              "VAE ceiling: the target through the model's own autoencoder (what no latent model can beat). "
              "Motion: PSNR (dB) and MAE (0-1) over the pixels where target and input differ by more than "
              "8/255, dilated 2 px (one mask per sample for every method).")
    if across:
        rows = [[_md(r.get("variant")), _md(r.get("eval_set")), _md(r.get("n_seeds")),
                 f"{_md(r.get('ssim_mean'), 4)} ± {_md(r.get('ssim_sd'), 4)}",
                 f"{_md(r.get('psnr_mean'), 2)} ± {_md(r.get('psnr_sd'), 2)}", _md(r.get("latent_copy_ssim"), 4),
                 _md(r.get("baseline_ssim"), 4),
                 f"{_md(r.get('motion_psnr_mean'), 2)} ± {_md(r.get('motion_psnr_sd'), 2)}",
                 _md(r.get("latent_copy_motion_psnr"), 2), _md(r.get("baseline_motion_psnr"), 2)]
                for r in across]
        parts.append("### Across training seeds (mean ± sd over seeds)\n\n" + _table(
            ["Variant", "Eval set", "Seeds", "SSIM", "PSNR (dB)", "Latent copy SSIM", "Copy-frame SSIM",
             "Motion PSNR (dB)", "Latent copy motion PSNR", "Copy-frame motion PSNR"], rows))
    if t_tests:
        rows = []
        for r in t_tests:
            d = 2 if str(r.get("metric", "")).lower().endswith("psnr") else 4
            ci = f"{_md(r.get('mean_diff'), d)} [{_md(r.get('ci95_low'), d)}, {_md(r.get('ci95_high'), d)}]"
            note = "; ".join(dict.fromkeys(str(x) for x in (r.get("paired_reason"), r.get("welch_reason")) if x))
            comparison = r.get("comparison") or "progress - plain"  # rows of t_test_results.json v1
            rows.append([_md(r.get("seed")), _md(comparison), _md(r.get("target_idx")), _md(r.get("eval_set")),
                         _md(r.get("metric")), _md(r.get("n_paired")), ci, _md(r.get("t"), 3), _md(r.get("p"), 4),
                         _md(r.get("cohen_dz"), 3), _md(r.get("welch_p"), 4), _md(r.get("hedges_g"), 3),
                         _md(note or None)])
        parts.append("### t-tests (arm B - arm A, paired by video)\n\n" + _table(
            ["Seed", "Comparison", "Target", "Eval set", "Metric", "n", "Mean diff [95% CI]", "Paired t", "Paired p",
             "d_z", "Welch p", "Hedges' g", "Note"], rows)
            + "\n\nprogress - plain: does the progress prompt help? progress - shuffled: does the percentage's "
              "information help (shuffled = another video's percent)? shuffled - plain: does the sentence's form help?")
    return "\n\n".join(parts) if parts else "_No evaluations or t-tests yet._"


# --- the table `make demo` ends with ----------------------------------------------------------------

def prediction_rows(results_by_model: Mapping[tuple[int, str, str], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (seed, variant, eval set): each method's mean SSIM and motion PSNR, and the paired
    test of model - latent copy on both."""
    import numpy as np

    from pecn_ml.stats import paired_test

    rows = []
    for (seed, variant, eval_set), res in sorted(results_by_model.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        samples = res.get("samples") or []
        row: dict[str, Any] = {"seed": seed, "variant": variant, "eval_set": eval_set, "n": len(samples)}
        for metric in ("ssim", "motion_psnr"):
            for prefix in MOTION_PREFIXES:  # model, latent copy, copy-frame, ceiling
                vals = [s.get(prefix + metric) for s in samples]
                row[f"{prefix or 'model_'}{metric}"] = (float(np.mean(vals)) if vals and None not in vals else math.nan)
            model = [s.get(metric) for s in samples]
            latent = [s.get("latent_copy_" + metric) for s in samples]
            test = (paired_test(latent, model) if samples and None not in model + latent
                    else {"mean_diff": math.nan, "p": math.nan})
            row[f"{metric}_vs_latent_copy"], row[f"{metric}_vs_latent_copy_p"] = test["mean_diff"], test["p"]
        rows.append(row)
    return rows


def _p(v: Any) -> str:
    x = _num(v)
    return "-" if x is None else (f"{x:.1e}" if x < 1e-3 else f"{x:.3f}")


def prediction_table(results_by_model: Mapping[tuple[int, str, str], Mapping[str, Any]],
                     t_tests: Sequence[Mapping[str, Any]] = ()) -> str:
    """The plain-text table `make demo` ends with: `prediction_rows`, then the t-tests on SSIM and motion PSNR."""
    blocks = (("ssim", "SSIM: model", 11, 7, 4), ("motion_psnr", "motion PSNR: model", 18, 6, 2))
    head = f"{'set':<10}{'variant':<16}{'seed':>4}{'n':>4}" + "".join(
        f"  {title:>{w}} {'latent':>6} {'copy':>6} {'ceil':>6} {'diff':>{wd}} {'p':>7}"
        for _, title, w, wd, _ in blocks)
    lines = [head, "-" * len(head)]
    for r in prediction_rows(results_by_model):
        lines.append(f"{r['eval_set']:<10}{r['variant']:<16}{r['seed']:>4}{r['n']:>4}" + "".join(
            f"  {_fmt(r['model_' + m], d):>{w}} {_fmt(r['latent_copy_' + m], d):>6} {_fmt(r['baseline_' + m], d):>6} "
            f"{_fmt(r['autoencoder_' + m], d):>6} {_fmt(r[m + '_vs_latent_copy'], d):>{wd}} "
            f"{_p(r[m + '_vs_latent_copy_p']):>7}" for m, _, w, wd, d in blocks))
    tests = [t for t in t_tests if t.get("metric") in ("ssim", "motion_psnr")]
    if tests:
        lines += ["", f"{'comparison':<22}{'target':>6} {'set':<10}{'seed':>10} {'metric':<12}{'n':>4} {'mean diff':>10} {'p':>8}"]
        for t in tests:
            seed = t.get("seed", "-")
            lines.append(f"{str(t.get('comparison', 'progress - plain')):<22}{t.get('target_idx', ''):>6} "
                         f"{t.get('eval_set', ''):<10}{seed!s:>10} {t['metric']:<12}{t.get('n_paired', 0)!s:>4} "
                         f"{_fmt(t.get('mean_diff'), 4):>10} {_p(t.get('p')):>8}")
    return "\n".join(lines)
