"""t-tests against scipy on fixed vectors; CI and effect sizes computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from pecn_ml.stats import (compare_runs, mean_over_seeds, paired_test, seed_t_test_table, t_test_table,
                           welch_test, write_t_tests)

WITHOUT = [0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70, 0.52]
WITH = [0.64, 0.57, 0.71, 0.55, 0.69, 0.60, 0.75, 0.58]


def _results(ids, values, metric="ssim", sha="a" * 64, other=None):
    other = other or [v * 40 for v in values]
    return {"samples": [{"video_id": i, metric: v, "psnr" if metric == "ssim" else "ssim": o}
                        for i, v, o in zip(ids, values, other)],
            "checkpoint_sha256": sha}


def test_paired_matches_scipy_and_hand_formulas():
    res = paired_test(WITHOUT, WITH)
    ref = sps.ttest_rel(WITH, WITHOUT)
    assert res["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    d = np.array(WITH) - np.array(WITHOUT)
    n, md, sd = len(d), d.mean(), d.std(ddof=1)
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert res["mean_diff"] == pytest.approx(md) and md > 0  # with - without
    assert (res["ci95_low"], res["ci95_high"]) == pytest.approx((md - half, md + half), rel=1e-12)
    assert res["effect_size"] == pytest.approx(md / sd) and res["effect_size_name"] == "cohen_dz"
    assert res["df"] == n - 1 and res["n"] == n and res["reason"] is None
    # t = mean / (sd / sqrt(n)) by hand too
    assert res["t"] == pytest.approx(md / (sd / math.sqrt(n)), rel=1e-12)


def test_welch_matches_scipy_and_hand_formulas():
    a, b = np.array(WITHOUT), np.array(WITH[:6]) + 0.02
    res = welch_test(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert res["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    na, nb, va, vb = len(a), len(b), a.var(ddof=1), b.var(ddof=1)
    se2 = va / na + vb / nb
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    md = b.mean() - a.mean()
    half = sps.t.ppf(0.975, df) * math.sqrt(se2)
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    g = (1 - 3 / (4 * (na + nb) - 9)) * md / pooled
    assert res["df"] == pytest.approx(df, rel=1e-12)
    assert (res["mean_diff"], res["ci95_low"], res["ci95_high"]) == pytest.approx((md, md - half, md + half))
    assert res["effect_size"] == pytest.approx(g) and res["effect_size_name"] == "hedges_g"
    assert (res["n_without"], res["n_with"], res["reason"]) == (8, 6, None)


def test_compare_runs_pairs_by_video_id():
    ids = [f"v{i}" for i in range(8)]
    without = _results(ids + ["only_without"], WITHOUT + [0.1])
    order = [3, 0, 7, 5, 1, 6, 2, 4]  # different order, one extra id on the other side too
    with_ = _results([ids[i] for i in order] + ["only_with"], [WITH[i] for i in order] + [0.9])
    res = compare_runs(without, with_, "ssim")
    assert (res["n_paired"], res["n_without"], res["n_with"]) == (8, 9, 9)
    ref = sps.ttest_rel(WITH, WITHOUT)
    assert res["paired"]["t"] == pytest.approx(ref.statistic, rel=1e-12)
    welch = sps.ttest_ind(WITH + [0.9], WITHOUT + [0.1], equal_var=False)
    assert res["welch"]["p"] == pytest.approx(welch.pvalue, rel=1e-12)
    assert res["mean_with"] == pytest.approx(np.mean(WITH + [0.9]))
    psnr = compare_runs(without, with_, "psnr")
    assert psnr["paired"]["mean_diff"] == pytest.approx(40 * (np.mean(WITH) - np.mean(WITHOUT)))


def test_degenerate_cases_give_nan_and_reason():
    one = paired_test([0.5], [0.6])
    assert math.isnan(one["t"]) and math.isnan(one["p"]) and "at least 2" in one["reason"]
    flat = paired_test([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])  # every difference 0.1
    assert math.isnan(flat["t"]) and "zero variance" in flat["reason"]
    assert flat["mean_diff"] == pytest.approx(0.1)
    same = welch_test([0.5, 0.5], [0.5, 0.5])
    assert math.isnan(same["p"]) and "zero variance" in same["reason"]
    small = welch_test([0.5], [0.5, 0.6])
    assert math.isnan(small["t"]) and "at least 2" in small["reason"]
    none = compare_runs(_results(["a", "b"], [0.1, 0.2]), _results(["c", "d"], [0.3, 0.4]), "ssim")
    assert none["n_paired"] == 0 and math.isnan(none["paired"]["p"])
    assert none["welch"]["reason"] is None and not math.isnan(none["welch"]["p"])


def test_compare_runs_rejects_bad_input():
    with pytest.raises(ValueError, match="metric"):
        compare_runs(_results(["a"], [0.1]), _results(["a"], [0.1]), "lpips")
    with pytest.raises(ValueError, match="twice"):
        compare_runs(_results(["a", "a"], [0.1, 0.2]), _results(["a"], [0.1]), "ssim")
    with pytest.raises(ValueError, match="samples"):
        compare_runs({"mean": {}}, _results(["a"], [0.1]), "ssim")


VARIANTS = ("next1", "next1_progress", "next5", "next5_progress", "next1_shuffled", "next5_shuffled")
COMPARISONS = ("progress - plain", "progress - shuffled", "shuffled - plain")


def _all_results(missing=(), motion=False):
    rng = np.random.default_rng(0)
    ids = [str(100 + i) for i in range(6)]
    out = {}
    for variant in VARIANTS:
        for eval_set in ("basic", "backforth"):
            if (variant, eval_set) in missing:
                continue
            vals = list(rng.uniform(0.3, 0.9, len(ids)))
            out[(variant, eval_set)] = _results(ids, vals, sha=f"sha-{variant}")
            if motion:
                for s, m in zip(out[(variant, eval_set)]["samples"], rng.uniform(12, 20, len(ids))):
                    s["motion_psnr"] = float(m)
    return out


def _row(rows, comparison, target, eval_set, metric):
    found = [r for r in rows if (r["comparison"], r["target_idx"], r["eval_set"], r["metric"]) ==
             (comparison, target, eval_set, metric)]
    assert len(found) == 1, (comparison, target, eval_set, metric)
    return found[0]


def test_t_test_table_rows():
    results = _all_results()  # ssim and psnr only: results written before motion_psnr existed
    rows = t_test_table(results)
    assert len(rows) == 2 * 3 * 2 * 3  # targets x comparisons x eval sets x metrics
    keys = {(r["comparison"], r["target_idx"], r["eval_set"], r["metric"]) for r in rows}
    assert keys == {(c, t, e, m) for c in COMPARISONS for t in (21, 25) for e in ("basic", "backforth")
                    for m in ("ssim", "psnr", "motion_psnr")}
    r = _row(rows, "progress - plain", 25, "backforth", "ssim")
    assert (r["without"], r["with"]) == ("next5", "next5_progress")
    assert (r["checkpoint_sha256_without"], r["checkpoint_sha256_with"]) == ("sha-next5", "sha-next5_progress")
    ref = compare_runs(results[("next5", "backforth")], results[("next5_progress", "backforth")], "ssim")
    assert r["p"] == ref["paired"]["p"] and r["welch_p"] == ref["welch"]["p"]
    assert r["cohen_dz"] == ref["paired"]["effect_size"] and r["hedges_g"] == ref["welch"]["effect_size"]
    # the control arms: arm A is the one subtracted
    assert {c: (x["without"], x["with"]) for c in COMPARISONS for x in [_row(rows, c, 21, "basic", "psnr")]} == {
        "progress - plain": ("next1", "next1_progress"), "progress - shuffled": ("next1_shuffled", "next1_progress"),
        "shuffled - plain": ("next1", "next1_shuffled")}
    # no motion_psnr in these results: a row that says so, with NaN statistics, instead of an error
    m = _row(rows, "progress - shuffled", 25, "basic", "motion_psnr")
    assert m["n_paired"] == 0 and math.isnan(m["p"]) and math.isnan(m["welch_p"]) and math.isnan(m["mean_diff"])
    assert "no 'motion_psnr' in the results of next5_shuffled and next5_progress" in m["paired_reason"]
    assert m["welch_reason"] == m["paired_reason"]
    partial = t_test_table(_all_results(missing={("next1_progress", "basic")}))
    # progress - plain and progress - shuffled of next1 on basic are gone; shuffled - plain stays
    assert len(partial) == 36 - 2 * 3
    assert {r["comparison"] for r in partial if r["target_idx"] == 21 and r["eval_set"] == "basic"} == {
        "shuffled - plain"}


def test_control_comparisons_known_answer():
    """plain, shuffled = plain + 0.002, progress = plain + 0.010 (+ per-video noise): each comparison
    finds its own difference, on ssim, psnr and motion_psnr alike."""
    ids = [f"v{i}" for i in range(10)]
    base = np.linspace(0.5, 0.8, 10)
    noise = np.array([1, -1, 2, -2, 0, 1, -1, 0, 2, -2]) * 1e-3
    arms = {"next5": base, "next5_shuffled": base + 0.002 + noise, "next5_progress": base + 0.010 - noise}

    def res(values, sha):
        return {"samples": [{"video_id": i, "ssim": v, "psnr": 40 * v, "motion_psnr": 20 * v}
                            for i, v in zip(ids, values)], "checkpoint_sha256": sha}

    rows = t_test_table({(v, "basic"): res(x, v) for v, x in arms.items()})
    assert len(rows) == 3 * 3 and {r["target_idx"] for r in rows} == {25}  # next1 has no results
    expected = {"progress - plain": (0.010, arms["next5_progress"] - base),
                "progress - shuffled": (0.008, arms["next5_progress"] - arms["next5_shuffled"]),
                "shuffled - plain": (0.002, arms["next5_shuffled"] - base)}
    for comparison, (diff, d) in expected.items():
        for metric, scale in (("ssim", 1), ("psnr", 40), ("motion_psnr", 20)):
            r = _row(rows, comparison, 25, "basic", metric)
            assert r["mean_diff"] == pytest.approx(scale * diff, rel=1e-9)
            ref = sps.ttest_1samp(scale * d, 0.0)
            assert r["t"] == pytest.approx(ref.statistic, rel=1e-9) and r["p"] == pytest.approx(ref.pvalue, rel=1e-9)
            assert r["n_paired"] == 10 and r["paired_reason"] is None
    assert _row(rows, "progress - shuffled", 25, "basic", "motion_psnr")["p"] < 1e-4  # 0.008 vs sd 0.0027


def test_write_t_tests_is_strict_json_with_shas(tmp_path):
    results = _all_results()
    results[("next1", "basic")]["samples"] = results[("next1", "basic")]["samples"][:1]  # forces NaN
    rows = t_test_table(results)
    path = write_t_tests(rows, tmp_path / "sub" / "t_test_results.json")
    assert path.name == "t_test_results.json"
    assert [p.name for p in path.parent.iterdir()] == ["t_test_results.json"]  # no temp files left

    def no_nan(x):
        raise AssertionError(f"non-standard JSON constant {x}")

    data = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_nan)
    assert data["n_tests"] == len(data["tests"]) == 36
    assert data["checkpoint_sha256"]["next5_progress"] == "sha-next5_progress"
    assert data["checkpoint_sha256"]["next1_shuffled"] == "sha-next1_shuffled"
    bad = next(t for t in data["tests"] if t["eval_set"] == "basic" and t["target_idx"] == 21
               and t["comparison"] == "progress - plain" and t["metric"] == "ssim")
    assert bad["t"] is None and "at least 2" in bad["paired_reason"]
    assert "cohen" in data["method"]["paired"].lower() and "hedges" in data["method"]["welch"].lower()


def test_seed_table_tests_each_seed_and_the_per_video_means():
    by_seed = {seed: _all_results() for seed in (0, 1)}
    for (variant, eval_set), r in by_seed[1].items():  # seed 1 scores differently (and lacks video 105)
        r["samples"] = [{**s, "ssim": s["ssim"] * 0.9} for s in r["samples"] if s["video_id"] != "105"]
    results = {(seed, v, s): r for seed, rs in by_seed.items() for (v, s), r in rs.items()}
    rows = seed_t_test_table(results)
    assert [r["seed"] for r in rows].count(0) == 36 and [r["seed"] for r in rows].count(1) == 36
    across = [r for r in rows if r["seed"] == "mean of 2"]
    assert len(across) == 36 and all(r["n_seeds"] == 2 for r in across)
    r = _row(across, "progress - plain", 21, "basic", "ssim")
    means = {k: mean_over_seeds([by_seed[0][k], by_seed[1][k]]) for k in (("next1", "basic"), ("next1_progress", "basic"))}
    assert [s["video_id"] for s in means[("next1", "basic")]["samples"]] == ["100", "101", "102", "103", "104"]
    ref = compare_runs(means[("next1", "basic")], means[("next1_progress", "basic")], "ssim")
    assert r["n_paired"] == 5 and r["p"] == ref["paired"]["p"]
    per_seed = [x["mean_diff"] for x in rows if x["seed"] in (0, 1) and
                (x["comparison"], x["target_idx"], x["eval_set"], x["metric"]) == ("progress - plain", 21, "basic", "ssim")]
    assert r["seed_mean_diff_mean"] == pytest.approx(np.mean(per_seed))
    assert r["seed_mean_diff_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    # the control comparisons are averaged over seeds too, each with its own per-seed differences
    c = _row(across, "progress - shuffled", 25, "backforth", "psnr")
    per_seed = [_row([x for x in rows if x["seed"] == sd], "progress - shuffled", 25, "backforth", "psnr")["mean_diff"]
                for sd in (0, 1)]
    assert c["seed_mean_diff_mean"] == pytest.approx(np.mean(per_seed))
    ref = compare_runs(mean_over_seeds([by_seed[0][("next5_shuffled", "backforth")], by_seed[1][("next5_shuffled", "backforth")]]),
                       mean_over_seeds([by_seed[0][("next5_progress", "backforth")], by_seed[1][("next5_progress", "backforth")]]),
                       "psnr")
    assert c["p"] == ref["paired"]["p"] and (c["without"], c["with"]) == ("next5_shuffled", "next5_progress")
    one = seed_t_test_table({k: v for k, v in results.items() if k[0] == 0})
    assert len(one) == 36 and {r["seed"] for r in one} == {0}  # one seed: no rows across seeds


def test_seed_table_with_motion_psnr_over_seeds():
    """motion_psnr in every seed's results: tested per seed and on the per-video means; a seed whose
    results lack it leaves the mean-over-seeds row untested (with the reason), not an error."""
    by_seed = {seed: _all_results(motion=True) for seed in (0, 1)}
    results = {(seed, v, s): r for seed, rs in by_seed.items() for (v, s), r in rs.items()}
    rows = seed_t_test_table(results)
    k = ("next5_shuffled", "basic"), ("next5", "basic")
    means = [mean_over_seeds([by_seed[0][x], by_seed[1][x]]) for x in k]
    assert all("motion_psnr" in s for s in means[0]["samples"])
    r = _row([x for x in rows if x["seed"] == "mean of 2"], "shuffled - plain", 25, "basic", "motion_psnr")
    ref = compare_runs(means[1], means[0], "motion_psnr")
    assert r["p"] == ref["paired"]["p"] and not math.isnan(r["p"]) and r["n_paired"] == 6
    assert r["mean_diff"] == pytest.approx(ref["paired"]["mean_diff"])
    for s in by_seed[1][("next5", "basic")]["samples"]:
        del s["motion_psnr"]
    rows = seed_t_test_table(results)
    assert not math.isnan(_row([x for x in rows if x["seed"] == 0], "shuffled - plain", 25, "basic", "motion_psnr")["p"])
    for seed in (1, "mean of 2"):
        r = _row([x for x in rows if x["seed"] == seed], "shuffled - plain", 25, "basic", "motion_psnr")
        assert math.isnan(r["p"]) and "no 'motion_psnr' in the results of next5" in r["paired_reason"]
    assert "motion_psnr" not in mean_over_seeds([by_seed[0][("next5", "basic")], by_seed[1][("next5", "basic")]])["samples"][0]
