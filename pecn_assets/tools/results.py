"""docs/RESULTS.md from a Dagster instance: `python -m pecn_assets.tools.results [--out FILE]` (`make results`).

Every number comes from the latest materialisations of `evaluation` and `t_tests` in the instance
(their artifacts, sha-verified), stamped with the commit and the machine that generated the file,
so the document cannot drift from a run. Reads no asset module: the instance and the artifacts only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from pecn_ml.artifacts import artifact_from_json
from pecn_ml.deployment import Deployment
from pecn_ml.report import prediction_rows

METHODS = (("model", "model_"), ("latent copy", "latent_copy_"), ("copy-frame", "baseline_"), ("ceiling", "autoencoder_"))


def latest_by_partition(instance: dg.DagsterInstance, key: str) -> dict[Optional[str], Any]:
    """{partition: the newest materialisation record} of asset `key` (partition None: unpartitioned)."""
    latest: dict[Optional[str], Any] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(dg.AssetKey(key), limit=500, cursor=cursor, ascending=False)
        for record in page.records:
            latest.setdefault(record.asset_materialization.partition, record)
        if not page.has_more:
            return latest
        cursor = page.cursor


def load_artifact(record: Any) -> Any:
    """The artifact a materialisation stored (its `artifact` handle), verified against its shas."""
    meta = record.asset_materialization.metadata
    if "artifact" not in meta:
        raise ValueError(f"materialisation of {record.asset_key.to_user_string()} in run {record.run_id} "
                         "has no `artifact` metadata")
    path = Path(meta["artifact"].value)
    artifact = artifact_from_json(json.loads(path.read_text(encoding="utf-8")))
    artifact.verify()
    return artifact


def collect(instance: dg.DagsterInstance) -> dict[str, Any]:
    """The evaluations (results by (seed, variant, eval set)), t-tests and provenance of `instance`."""
    evaluations = latest_by_partition(instance, "evaluation")
    if not evaluations:
        raise SystemExit("no materialised `evaluation` in this instance: run `make demo` first")
    results, provenance = {}, []
    for partition, record in sorted(evaluations.items(), key=lambda kv: str(kv[0])):
        evaluation = load_artifact(record)
        for s in evaluation.sets:
            results[(evaluation.seed, evaluation.variant, s)] = evaluation.results(s)
        meta = record.asset_materialization.metadata
        provenance.append({"partition": partition, "run": record.run_id[:8],
                           "checkpoint_sha256": str(meta["checkpoint_sha256"].value)[:16] if "checkpoint_sha256" in meta else "-",
                           "time": record.timestamp})
    tests = latest_by_partition(instance, "t_tests")
    t_rows = load_artifact(tests[None]).rows() if None in tests else []
    return {"results": results, "t_tests": t_rows, "provenance": provenance}


def stamp(repo: Path) -> dict[str, str]:
    """Commit (with `-dirty` when the tree has changes) and machine that generate the document."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/RESULTS.md"):
        commit += "-dirty"
    import torch

    machine = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, Python "
               f"{platform.python_version()}, torch {torch.__version__}"
               f"{', CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ', no GPU'}")
    return {"commit": commit, "machine": machine,
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _f(v: Any, digits: int) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _p(v: Any) -> str:
    return "-" if v is None or v != v else (f"{v:.1e}" if v < 1e-3 else f"{v:.3f}")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; a `|` inside a cell (partition keys such as `0|next5`) is escaped."""
    cells = lambda r: "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"  # noqa: E731
    return [cells(headers), "|" + "---|" * len(headers), *(cells(r) for r in rows)]


def render(data: dict[str, Any], stamps: dict[str, str], dagster_home: str) -> str:
    """The markdown document."""
    rows = prediction_rows(data["results"])
    times = [p["time"] for p in data["provenance"]]
    span = " to ".join(datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") for t in (min(times), max(times)))
    lines = ["# Results (generated: do not edit)", "",
             f"Generated by `python -m pecn_assets.tools.results` from `{dagster_home}` at {stamps['generated']}, "
             f"commit `{stamps['commit']}`, on {stamps['machine']}. The evaluations were materialised {span}.", "",
             "Each model beside what it must beat (latent copy: frame 20 through its own VAE; copy-frame: "
             "frame 20 itself) and what it cannot beat (ceiling: the target frame through the VAE), over the "
             "whole frame (SSIM) and where the frame changes (motion PSNR, dB). diff = model - latent copy, "
             "paired over videos (p: paired t-test).", ""]
    for metric, name, digits in (("ssim", "SSIM", 4), ("motion_psnr", "Motion-region PSNR (dB)", 2)):
        lines += [f"## {name}", ""]
        body = [[r["eval_set"], r["variant"], str(r["seed"]), str(r["n"]),
                 *(_f(r[f"{prefix}{metric}"], digits) for _, prefix in METHODS),
                 _f(r[f"{metric}_vs_latent_copy"], digits), _p(r[f"{metric}_vs_latent_copy_p"])] for r in rows]
        lines += _table(["set", "variant", "seed", "n", *(m for m, _ in METHODS), "diff", "p"], body) + [""]
    tests = [t for t in data["t_tests"] if t.get("metric") in ("ssim", "motion_psnr")]
    if tests:
        lines += ["## Progress prompts (t_tests)", ""]
        body = [[str(t.get("comparison", "progress - plain")), str(t.get("target_idx", "")), str(t.get("eval_set", "")),
                 str(t.get("seed", "-")), t["metric"], str(t.get("n_paired", "")), _f(t.get("mean_diff"), 4), _p(t.get("p"))]
                for t in tests]
        lines += _table(["comparison", "target", "set", "seed", "metric", "n", "mean diff", "p"], body) + [""]
    lines += ["## Provenance", ""]
    lines += _table(["evaluation partition", "run", "checkpoint sha256"],
                    [[str(p["partition"]), p["run"], p["checkpoint_sha256"]] for p in data["provenance"]])
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write here (default: print)")
    args = parser.parse_args(argv)
    deployment = Deployment.from_env(os.environ)
    home = Path(deployment.dagster_home or "dagster_home").absolute()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        text = render(collect(instance), stamp(Path.cwd()), os.path.relpath(home))
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.out)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
