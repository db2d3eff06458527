"""t-tests between the variants' evaluations (the seed's t_test.py, plus the control arms).

Per comparison of `pecn_ml.variants.comparison_pairs` (progress - plain, progress - shuffled,
shuffled - plain; difference = arm B "with" - arm A "without"), target frame, eval set, metric and
training seed: a paired t-test over the videos both runs scored (Cohen's d_z) and Welch's t-test
(Hedges' g), both two-sided (`METHOD`). A test that cannot be computed (n < 2, zero variance, a
metric the results lack) gives NaN statistics and a `reason`, stored as null in JSON.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from pecn_ml.utils.files import write_json_atomic
from pecn_ml.variants import EVAL_SETS, comparison_pairs

METRICS = ("ssim", "psnr", "motion_psnr")
NAN = float("nan")
_ZERO = 1e-12   # a standard deviation below this (relative to the values) counts as zero variance
_STATISTICS = ("df", "t", "p", "mean_diff", "ci95_low", "ci95_high", "effect_size")  # NaN until computed
T_TESTS_FORMAT_VERSION = 2  # 2: three comparisons (`comparison`), motion_psnr

METHOD = {
    "difference": "arm B ('with') - arm A ('without') of each comparison: progress - plain, "
                  "progress - shuffled, shuffled - plain",
    "paired": "scipy.stats.ttest_rel over videos scored by both runs, two-sided; CI: t(n-1); "
              "effect size Cohen's d_z = mean(diff) / sd(diff, ddof=1)",
    "welch": "scipy.stats.ttest_ind(equal_var=False) over all samples of each run, two-sided; "
             "CI: Welch-Satterthwaite df; effect size Hedges' g (pooled sd, ddof=1, J = 1 - 3/(4(n1+n2)-9))",
    "confidence": 0.95,
    "seeds": "rows with seed 'mean of N': the same tests on each video's score averaged over the N "
             "training seeds (videos every seed scored); seed_mean_diff_mean/sd: mean and sd (ddof=1) "
             "over seeds of the per-seed paired mean differences",
}


def _scores(results: Mapping[str, Any], metric: str, name: str) -> dict[str, float]:
    """{video_id: score} of one results dict (results.json of an evaluation)."""
    samples = results.get("samples") if isinstance(results, Mapping) else None
    if not isinstance(samples, list):
        raise ValueError(f"{name} results have no 'samples' list")
    out: dict[str, float] = {}
    for i, s in enumerate(samples):
        if not isinstance(s, Mapping) or "video_id" not in s or metric not in s:
            raise ValueError(f"{name} results: sample {i} lacks 'video_id' or {metric!r}")
        vid = str(s["video_id"])
        if vid in out:
            raise ValueError(f"{name} results: video {vid} appears twice")
        value = s[metric]
        out[vid] = NAN if value is None else float(value)
    return out


def paired_test(without: Sequence[float], with_: Sequence[float]) -> dict[str, Any]:
    """Paired t-test of with_ - without (aligned sequences): t, p, 95% CI from t(n-1), Cohen's d_z."""
    from scipy import stats

    x, y = np.asarray(without, dtype=np.float64), np.asarray(with_, dtype=np.float64)
    assert x.shape == y.shape and x.ndim == 1, (x.shape, y.shape)
    n = int(x.size)
    out = {"test": "paired", "n": n, **dict.fromkeys(_STATISTICS, NAN), "effect_size_name": "cohen_dz", "reason": None}
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return {**out, "reason": "non-finite scores"}
    if n < 2:
        return {**out, "mean_diff": float(np.mean(y - x)) if n else NAN,
                "reason": f"n = {n} paired samples; at least 2 needed"}
    d = y - x
    md, sd = float(d.mean()), float(d.std(ddof=1))
    out.update(df=float(n - 1), mean_diff=md)
    if sd <= _ZERO * max(1.0, float(np.abs(d).max())):  # equal up to float rounding
        return {**out, "ci95_low": md, "ci95_high": md,
                "reason": "zero variance of the paired differences (all differences equal)"}
    res = stats.ttest_rel(y, x)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out.update(t=float(res.statistic), p=float(res.pvalue), ci95_low=md - half, ci95_high=md + half,
               effect_size=md / sd)
    return out


def welch_test(without: Sequence[float], with_: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test of mean(with_) - mean(without): Welch-Satterthwaite df, 95% CI, Hedges' g
    (pooled sd, ddof=1, J = 1 - 3 / (4 (n1 + n2) - 9))."""
    from scipy import stats

    a, b = np.asarray(without, dtype=np.float64), np.asarray(with_, dtype=np.float64)
    na, nb = int(a.size), int(b.size)
    out = {"test": "welch", "n_without": na, "n_with": nb, **dict.fromkeys(_STATISTICS, NAN),
           "effect_size_name": "hedges_g", "reason": None}
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return {**out, "reason": "non-finite scores"}
    if na and nb:
        out["mean_diff"] = float(b.mean() - a.mean())
    if na < 2 or nb < 2:
        return {**out, "reason": f"n = {na} without / {nb} with; at least 2 each needed"}
    va, vb = float(a.var(ddof=1)), float(b.var(ddof=1))
    md = out["mean_diff"]
    se2 = va / na + vb / nb
    if math.sqrt(se2) <= _ZERO * max(1.0, float(np.abs(a).max()), float(np.abs(b).max())):
        return {**out, "ci95_low": md, "ci95_high": md, "reason": "zero variance in both runs"}
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    res = stats.ttest_ind(b, a, equal_var=False)
    half = float(stats.t.ppf(0.975, df)) * math.sqrt(se2)
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    j = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0)
    out.update(df=float(df), t=float(res.statistic), p=float(res.pvalue), ci95_low=md - half,
               ci95_high=md + half, effect_size=j * md / pooled if pooled > 0 else NAN)
    return out


def compare_runs(without: Mapping[str, Any], with_: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Paired (videos in both, in `without`'s order) and Welch t-tests of `metric` between two
    results.json dicts: {"metric", "n_without", "n_with", "n_paired", "mean_without", "mean_with",
    "paired", "welch"}."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    a, b = _scores(without, metric, "arm A (without)"), _scores(with_, metric, "arm B (with)")
    common = [vid for vid in a if vid in b]
    va, vb = list(a.values()), list(b.values())
    return {
        "metric": metric,
        "n_without": len(a), "n_with": len(b), "n_paired": len(common),
        "mean_without": float(np.mean(va)) if va else NAN,
        "mean_with": float(np.mean(vb)) if vb else NAN,
        "paired": paired_test([a[v] for v in common], [b[v] for v in common]),
        "welch": welch_test(va, vb),
    }


_FLAT = ("mean_diff", "ci95_low", "ci95_high", "t", "df", "p")  # each test's statistics, in the rows' order


def _flat_row(cmp: Mapping[str, Any]) -> dict[str, Any]:
    p, w = cmp["paired"], cmp["welch"]
    return {**{k: cmp[k] for k in ("n_paired", "n_without", "n_with", "mean_without", "mean_with")},
            **{k: p[k] for k in _FLAT}, "cohen_dz": p["effect_size"], "paired_reason": p["reason"],
            **{f"welch_{k}": w[k] for k in _FLAT}, "hedges_g": w["effect_size"], "welch_reason": w["reason"]}


def _lacks(results: Mapping[str, Any], metric: str) -> bool:
    """True when results has samples and none of them has `metric` (scored before it existed)."""
    samples = results.get("samples") if isinstance(results, Mapping) else None
    return isinstance(samples, list) and bool(samples) and not any(
        isinstance(s, Mapping) and metric in s for s in samples)


def _untested(a: Mapping[str, Any], b: Mapping[str, Any], metric: str, lacking: list[str]) -> dict[str, Any]:
    """compare_runs' shape with NaN statistics, for a metric that the results of `lacking` lack."""
    reason = f"no {metric!r} in the results of {' and '.join(lacking)}: not tested"
    paired = {**paired_test([], []), "n": 0, "mean_diff": NAN, "reason": reason}
    welch = {**welch_test([], []), "reason": reason}
    n_a, n_b = len(a.get("samples") or []), len(b.get("samples") or [])
    return {"metric": metric, "n_without": n_a, "n_with": n_b, "n_paired": 0, "mean_without": NAN,
            "mean_with": NAN, "paired": paired, "welch": welch}


def t_test_table(results_by_eval: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per (comparison, eval set, metric) from {(variant name, eval set): results};
    comparisons with a missing side are left out. Rows carry both models' `checkpoint_sha256`."""
    rows = []
    for comparison, without_v, with_v in comparison_pairs():
        for eval_set in EVAL_SETS:
            a = results_by_eval.get((without_v.name, eval_set))
            b = results_by_eval.get((with_v.name, eval_set))
            if a is None or b is None:
                continue
            for metric in METRICS:
                lacking = [v.name for v, r in ((without_v, a), (with_v, b)) if _lacks(r, metric)]
                cmp = _untested(a, b, metric, lacking) if lacking else compare_runs(a, b, metric)
                rows.append({
                    "comparison": comparison,
                    "target_idx": without_v.target_idx, "eval_set": eval_set, "metric": metric,
                    "without": without_v.name, "with": with_v.name,
                    "without_model": without_v.seed_name, "with_model": with_v.seed_name,
                    **_flat_row(cmp),
                    "checkpoint_sha256_without": a.get("checkpoint_sha256"),
                    "checkpoint_sha256_with": b.get("checkpoint_sha256"),
                })
    return rows


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None, recursively (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_t_tests(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write `t_test_results.json` atomically ({"format_version", "method", "n_tests", "tests",
    "checkpoint_sha256": {"[{seed}|]{variant}": sha}}), NaN as null."""
    shas: dict[str, Optional[str]] = {}
    for r in rows:
        if r.get("checkpoint_sha256_without") is None and r.get("checkpoint_sha256_with") is None:
            continue  # means over seeds: no single model
        prefix = f"{r['seed']}|" if "seed" in r else ""
        shas.setdefault(prefix + str(r.get("without")), r.get("checkpoint_sha256_without"))
        shas.setdefault(prefix + str(r.get("with")), r.get("checkpoint_sha256_with"))
    payload = {"format_version": T_TESTS_FORMAT_VERSION, "method": METHOD, "n_tests": len(rows),
               "checkpoint_sha256": shas, "tests": [dict(r) for r in rows]}
    return write_json_atomic(path, _json_safe(payload))


# --- several training seeds ------------------------------------------------------------------------

def mean_over_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A results-like dict whose samples are the per-video means over `results` (one results dict
    per training seed), for the videos every seed scored; `n_seeds` says over how many."""
    per_seed = [{str(s["video_id"]): s for s in r["samples"]} for r in results]
    common = [vid for vid in per_seed[0] if all(vid in p for p in per_seed[1:])] if per_seed else []
    # a metric some seed's results lack (scored before it existed) is left out; None counts as NaN
    samples = [{"video_id": vid, **{m: float(np.mean([NAN if p[vid][m] is None else p[vid][m] for p in per_seed]))
                                    for m in METRICS if all(m in p[vid] for p in per_seed)}}
               for vid in common]
    return {"samples": samples, "n_seeds": len(results), "checkpoint_sha256": None}


def seed_t_test_table(results: Mapping[tuple[int, str, str], Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`t_test_table` per seed of {(seed, variant, eval set): results}, and with two or more seeds
    the same on per-video means over seeds (`seed` = "mean of N", with the mean and sd over seeds
    of the per-seed mean differences)."""
    seeds = sorted({seed for seed, _, _ in results})
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        table = t_test_table({(v, s): r for (sd, v, s), r in results.items() if sd == seed})
        rows += [{"seed": seed, "n_seeds": 1, **row} for row in table]
    if len(seeds) < 2:
        return rows
    keys = {(v, s) for _, v, s in results}
    complete = {k: [results[(seed, *k)] for seed in seeds] for k in keys
                if all((seed, *k) in results for seed in seeds)}
    for row in t_test_table({k: mean_over_seeds(rs) for k, rs in complete.items()}):
        diffs = [r["mean_diff"] for r in rows if (r["comparison"], r["target_idx"], r["eval_set"], r["metric"]) ==
                 (row["comparison"], row["target_idx"], row["eval_set"], row["metric"])]
        rows.append({"seed": f"mean of {len(seeds)}", "n_seeds": len(seeds), **row,
                     "seed_mean_diff_mean": float(np.mean(diffs)),
                     "seed_mean_diff_sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else NAN})
    return rows
