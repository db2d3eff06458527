"""The demo's models on synthetic videos no model trained on: another generator seed.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_heldout_seed.py [--seed 1] [--workdir DIR]

Run after `make demo`. Writes a synthetic SSv2 set with generator seed `--seed` (the demo
profile's config otherwise: same templates and sizes, new scenes, lengths and speeds), caches its
frames at the demo's resolution, and scores every trained `ip2p_model` of the demo's Dagster
instance (loaded, verified, through the I/O manager) on its filtered validation videos with the
evaluation's own code (`pecn_ml.sampling.evaluate_model`: same selection, prompts, sampler,
latent copy, copy-frame, ceiling and motion mask). Prints the demo's prediction table for them:
a model that beats latent copy here predicts motion in scenes it has never seen, rather than
remembering the training scenes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="synthetic generator seed (the demo trains on 0)")
    parser.add_argument("--workdir", default=None, help="where the held-out data and results go (default: a temp dir)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PECN_PROFILE", "demo")
    os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").absolute()))

    import dagster as dg

    from pecn_assets.build import build_definitions
    from pecn_ml.data.annotations import filter_annotations
    from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache
    from pecn_ml.data.synthetic import write_synthetic_ssv2
    from pecn_ml.deployment import Deployment
    from pecn_ml.profiles import get_profile
    from pecn_ml.report import prediction_table
    from pecn_ml.sampling import evaluate_model
    from pecn_ml.variants import EVAL_SETS, VARIANTS

    deployment = Deployment.from_env(os.environ)
    profile = get_profile(deployment.profile)
    if profile.synthetic is None:
        raise SystemExit(f"profile {profile.name} has no synthetic data to draw another seed of")
    if args.seed == profile.synthetic.seed:
        raise SystemExit(f"--seed {args.seed} is the seed the models trained on")
    defs = build_definitions(deployment)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pecn_heldout_"))
    data = work / f"synthetic_seed{args.seed}"
    t0 = time.perf_counter()
    write_synthetic_ssv2(data, replace(profile.synthetic, seed=args.seed), log=print)
    filtered = filter_annotations(data, profile.filter)
    eval_entries = {s: filtered.entries[f] for s, f in EVAL_SETS.items()}
    build_frame_cache(data, profile.pix2pix_resolution, [e["id"] for es in eval_entries.values() for e in es], log=print)
    cache = open_frame_cache(data, profile.pix2pix_resolution)
    print(f"held-out data (seed {args.seed}) ready in {time.perf_counter() - t0:.0f}s: "
          + ", ".join(f"{s} {len(es)} videos" for s, es in eval_entries.items()))

    graph = defs.resolve_asset_graph()
    results = {}
    with dg.DagsterInstance.get() as instance:
        for key in graph.get(dg.AssetKey("ip2p_model")).partitions_def.get_partition_keys(
                dynamic_partitions_store=instance):  # the seeds in the instance (the seed dimension is dynamic)
            ckpt = defs.load_asset_value("ip2p_model", partition_key=key, instance=instance)
            v = VARIANTS[ckpt.variant]
            sampling = replace(profile.sampling, input_idx=v.input_idx, target_idx=v.target_idx,
                               add_progress=v.add_progress, progress_shuffle_seed=v.shuffle_seed,
                               prompt_text=profile.prompt_text)
            for s, entries in eval_entries.items():
                r = evaluate_model(ckpt.path, cache, entries, sampling, work / "results" / f"{ckpt.seed}_{v.name}_{s}")
                results[(ckpt.seed, v.name, s)] = r.results_json
    import json

    loaded = {k: json.loads(Path(p).read_text(encoding="utf-8")) for k, p in results.items()}
    print(f"\nThe demo's models on generator seed {args.seed} ({time.perf_counter() - t0:.0f}s in total):")
    print(prediction_table(loaded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
