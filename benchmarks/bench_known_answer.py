"""Known-answer experiment: does the progress prompt help next5, as the synthetic data says it must?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_known_answer.py [--train-per-template 10]
        [--val-per-template 8] [--steps 600] [--train-seeds 1] [--sample-seeds 2] [--workdir DIR]
        [--json out.json]

The synthetic videos plant the effect (see `pecn_ml/data/synthetic.py`, "What the progress
prompt adds"): at frame 20 an action's speed is ~1 / T, so where the object is at frame 25
depends on the video's length, which the prompt's percentage gives away and frame 20 does not.
This benchmark measures it on translation and go-and-come-back templates, with three arms that
differ only in the prompts (same data, stand-in base, steps and seeds):

  plain      "Generate a future frame of this action: <class>"               (the seed's next5)
  progress   the same "... And N% of the action has been completed."          (next5_progress)
  shuffled   the same sentence with N taken from another training video      (negative control)

Each arm fine-tunes the demo's stand-in base (`pecn_ml.models.standins`, built here on the
training videos, or --base) for --steps optimizer steps per training seed, then samples every validation
video (frame 20 -> 25) with --sample-seeds sampling seeds; a video's score is its SSIM averaged
over training and sampling seeds. The paired t-test (`pecn_ml.stats.paired_test`) compares
progress - plain and shuffled - plain per video. Expected: progress > plain with p < 0.05;
shuffled not better than plain. The demo's own t-test (one seed, short training, 24 samples) is
reported in the README beside this.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pecn_ml.data.annotations import FilterConfig, filter_annotations, load_filtered  # noqa: E402
from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache  # noqa: E402
from pecn_ml.data.pairs import FramePairDataset  # noqa: E402
from pecn_ml.data.synthetic import SyntheticConfig, write_synthetic_ssv2  # noqa: E402
from pecn_ml.data.templates import label_key_of  # noqa: E402
from pecn_ml.models.standins import StandinConfig, build_standin_pix2pix  # noqa: E402
from pecn_ml.prompts import progress_percent  # noqa: E402
from pecn_ml.sampling import SamplingConfig, evaluate_model  # noqa: E402
from pecn_ml.stats import paired_test  # noqa: E402
from pecn_ml.training.pix2pix import Pix2PixTrainConfig, train_pix2pix  # noqa: E402

TEMPLATES = ("Pushing [something] from left to right", "Pulling [something] from right to left",
             "Moving [something] up", "Moving [something] down",
             "Letting [something] roll up a slanted surface, so it rolls back down",
             "Throwing [something] in the air and catching it")
ARMS = ("plain", "progress", "shuffled")
INPUT, TARGET = 20, 25


def make_data(root: Path, args) -> tuple:
    """Synthetic SSv2 of TEMPLATES (no short videos), its 96 px cache, train and val entries."""
    data = root / "data"
    write_synthetic_ssv2(data, SyntheticConfig(
        seed=args.data_seed, templates=tuple(label_key_of(t) for t in TEMPLATES),
        task_train_per_template=args.train_per_template, task_val_per_template=args.val_per_template,
        other_train_per_template=0, other_val_per_template=0, num_test=0, short_fraction=0.0))
    filter_annotations(data, FilterConfig())
    ann = data / "annotations"
    train = load_filtered(ann / "train_filtered.json")
    val = load_filtered(ann / "val_filtered.json") + load_filtered(ann / "val_filtered_backforth.json")
    build_frame_cache(data, 96, [e["id"] for e in train + val])
    return open_frame_cache(data, 96), train, val


def shuffled_percents(cache, entries: list[dict], seed: int) -> dict[str, float]:
    """Each video's true percentage at frame 20, permuted across the videos (no information left)."""
    ids = [e["id"] for e in entries]
    true = [progress_percent(INPUT, cache.num_frames(v)) for v in ids]
    perm = np.random.default_rng(seed).permutation(len(ids))
    return {v: float(true[j]) for v, j in zip(ids, perm)}


def run_arm(arm: str, base: Path, cache, train, val, root: Path, args, train_seed: int) -> dict[str, list]:
    """Fine-tune one arm with one training seed; per-video SSIM for each sampling seed."""
    progress = arm != "plain"
    est_train = shuffled_percents(cache, train, 1000 + train_seed) if arm == "shuffled" else None
    est_val = shuffled_percents(cache, val, 2000 + train_seed) if arm == "shuffled" else None
    pairs = FramePairDataset(cache, train, input_idx=INPUT, target_idx=TARGET, add_progress=progress,
                             progress_estimates=est_train)
    config = Pix2PixTrainConfig.demo(seed=train_seed, max_train_steps=args.steps, learning_rate=args.lr,
                                     train_batch_size=16, gradient_accumulation_steps=1,
                                     lr_scheduler="cosine", num_validation_samples=0,
                                     latent_cache_dir=str(root / f"latents-{arm}"))
    t0 = time.perf_counter()
    model = train_pix2pix(base, pairs, config, root / f"{arm}-s{train_seed}").model_dir
    train_s = time.perf_counter() - t0
    scores: dict[str, list] = {}
    for s in range(args.sample_seeds):
        sc = SamplingConfig(input_idx=INPUT, target_idx=TARGET, num_samples=len(val), num_inference_steps=10,
                            batch_size=8, seed=s, add_progress=progress)
        res = evaluate_model(model, cache, val, sc, root / f"eval-{arm}-s{train_seed}-{s}", progress_override=est_val)
        for row in res.samples:
            scores.setdefault(row["video_id"], []).append(row["ssim"])
    print(f"  {arm:9s} seed {train_seed}: trained {args.steps} steps in {train_s:.0f}s, "
          f"SSIM {np.mean([np.mean(v) for v in scores.values()]):.4f} on {len(scores)} videos", flush=True)
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-template", type=int, default=10)
    ap.add_argument("--val-per-template", type=int, default=8)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-seeds", type=int, default=1)
    ap.add_argument("--sample-seeds", type=int, default=2)
    ap.add_argument("--data-seed", type=int, default=7)
    ap.add_argument("--base", type=Path, default=None,
                    help="an InstructPix2Pix folder to start from (e.g. the demo's pix2pix_base stand-in); "
                         "default: build the stand-in on this benchmark's training videos")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="pecn-known-answer-"))
    t0 = time.perf_counter()
    cache, train, val = make_data(root, args)
    print(f"data: {len(train)} train / {len(val)} val videos of {len(TEMPLATES)} templates in "
          f"{time.perf_counter() - t0:.0f}s ({root})", flush=True)
    if args.base:
        base = args.base
    else:
        videos = [cache.frames(e["id"]) for e in train]
        base = build_standin_pix2pix(root / "pretrained", videos, StandinConfig.demo(), "known-answer").path
    per_arm: dict[str, dict[str, float]] = {}
    for arm in ARMS:
        runs = [run_arm(arm, base, cache, train, val, root, args, s) for s in range(args.train_seeds)]
        per_arm[arm] = {v: float(np.mean([x for r in runs for x in r[v]])) for v in runs[0]}
    ids = sorted(set.intersection(*(set(p) for p in per_arm.values())))
    plain = [per_arm["plain"][v] for v in ids]
    out = {"videos": len(ids), "steps": args.steps, "train_seeds": args.train_seeds,
           "sample_seeds": args.sample_seeds, "seconds": round(time.perf_counter() - t0, 1),
           "mean_ssim": {a: float(np.mean(list(per_arm[a].values()))) for a in ARMS}}
    for arm in ("progress", "shuffled"):
        out[f"{arm}_vs_plain"] = paired_test(plain, [per_arm[arm][v] for v in ids])
    print(f"\nnext5 SSIM on {len(ids)} validation videos, {args.train_seeds} training x "
          f"{args.sample_seeds} sampling seeds:")
    for arm in ARMS:
        print(f"  {arm:9s} {out['mean_ssim'][arm]:.4f}")
    for arm in ("progress", "shuffled"):
        t = out[f"{arm}_vs_plain"]
        print(f"  {arm} - plain: mean diff {t['mean_diff']:+.4f} (95% CI {t['ci95_low']:+.4f} .. "
              f"{t['ci95_high']:+.4f}), paired t = {t['t']:.2f}, p = {t['p']:.3g}, n = {t['n']}")
    print(f"total {out['seconds']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
