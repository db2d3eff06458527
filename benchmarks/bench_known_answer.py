"""Known-answer experiment: does the progress prompt's *information* help next5, as the synthetic data says it must?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_known_answer.py [--train-per-template 10]
        [--val-per-template 8] [--steps N | --epochs N] [--train-seeds 1] [--sample-seeds 2]
        [--data-seed 3] [--base DIR | --base-steps N] [--template-set translation|informative]
        [--workdir DIR] [--json out.json]

The synthetic videos plant the effect (see `pecn_ml/data/synthetic.py`, "What the progress
prompt adds"): at frame 20 an action's speed is ~1 / T, so where the object is at frame 25
depends on the video's length, which the prompt's percentage gives away and frame 20 does not.
This benchmark measures it on translation and go-and-come-back templates (or, with
`--template-set informative`, on the six templates where the percent predicts the most) with the platform's
three next5 arms (`pecn_ml.variants`), which differ only in the prompts:

  plain      next5           "Generate a future frame of this action: <class>"
  progress   next5_progress  the same + ". And N% of the action has been completed."
  shuffled   next5_shuffled  the same sentence with N of another video: the platform's control,
                             `pecn_ml.prompts.shuffle_percents` (a derangement seeded with
                             PROGRESS_SHUFFLE_SEED) among the training videos, and among each eval
                             set's samples; same form and distribution of N, no information

It runs the assets' own code with the demo profile's settings (`pecn_ml.profiles.demo_profile()`),
so it follows that profile when it changes:

* data: `profile.synthetic` restricted to TEMPLATES or INFORMATIVE_TEMPLATES (no other templates, no short videos, no test
  ids), --train/--val-per-template videos per template, generator seed --data-seed;
  `profile.filter`; the frame cache at `profile.pix2pix_resolution`;
* base: the stand-in built like the `pix2pix_base` asset builds it (`profile.standins`, on this
  benchmark's training videos and action texts), or --base; --base-steps shortens its VAE and
  UNet pretraining (smoke runs);
* training (as `ip2p_model`): `FramePairDataset.for_variant` and `train_pix2pix` with
  `profile.pix2pix_train`, seeded with the training seed (0 .. --train-seeds - 1); --steps or
  --epochs override only its length;
* evaluation (as `evaluation`): `evaluate_model` with `profile.sampling` given the variant's
  frames, progress and shuffle seed and `profile.prompt_text`, on every video of both eval sets
  (basic, backforth), sampling seed `profile.sampling.seed + k` for k < --sample-seeds.

A video's score is its SSIM, PSNR or motion-region PSNR (results.json `motion_psnr`: pixels that
change by more than 8/255 between frames 20 and 25, dilated 2 px) averaged over training and
sampling seeds. Paired t-tests by video (`pecn_ml.stats.paired_test`) on SSIM and motion PSNR:

  progress - shuffled    does the percentage's information help?   (the known answer)
  shuffled - plain       does the sentence's form help?
  progress - plain       the seed's with/without-progress question
  <arm> - latent copy    does the arm predict rather than copy? (latent copy: frame 20 through
                         the model's own VAE, results.json `latent_copy_*`)

The table also shows the copy frame (frame 20 as it is) and the VAE ceiling (frame 25 through the
VAE) for scale. Expected: progress - shuffled > 0 in motion-region PSNR (paired, p < 0.05), since
only the true percentage says how far the object has still to go; the form alone (shuffled -
plain) has no reason to help.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pecn_ml.data.annotations import filter_annotations, load_filtered  # noqa: E402
from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache  # noqa: E402
from pecn_ml.data.pairs import FramePairDataset  # noqa: E402
from pecn_ml.data.synthetic import write_synthetic_ssv2  # noqa: E402
from pecn_ml.data.templates import label_key_of  # noqa: E402
from pecn_ml.models.standins import build_standin_pix2pix  # noqa: E402
from pecn_ml.profiles import Profile, demo_profile  # noqa: E402
from pecn_ml.prompts import action_text  # noqa: E402
from pecn_ml.sampling import SamplingConfig, evaluate_model  # noqa: E402
from pecn_ml.stats import paired_test  # noqa: E402
from pecn_ml.training.pix2pix import train_pix2pix  # noqa: E402
from pecn_ml.utils.files import sha256_json  # noqa: E402
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE, VARIANTS  # noqa: E402

TEMPLATES = ("Pushing [something] from left to right", "Pulling [something] from right to left",
             "Moving [something] up", "Moving [something] down",
             "Letting [something] roll up a slanted surface, so it rolls back down",
             "Throwing [something] in the air and catching it")
# The templates where the percent carries the most about the motion to predict, chosen from the
# generator's ground truth alone (`object_states`, no model): within each template of the demo's
# data (seed 0, videos with frame 25), the object's displacement from frame 20 to 25 at 96 px has a
# spread of >= 2 px and correlates with the prompt's percent by |r| >= 0.6. Measured: roll back r
# +0.97 (sd 6.4 px), throw and catch +0.94 (4.0), dropping in front of -0.64 (3.1), dropping next
# to -0.61 (3.3), falling like a rock -0.66 (2.2), covering -0.87 (2.1). In TEMPLATES' four
# translations the spread is 0.4-1.4 px: the percent there says little (docs/demo_experiments.md
# row 24).
INFORMATIVE_TEMPLATES = ("Letting [something] roll up a slanted surface, so it rolls back down",
                         "Throwing [something] in the air and catching it",
                         "Dropping [something] in front of [something]", "Dropping [something] next to [something]",
                         "[Something] falling like a rock", "Covering [something] with [something]")
TEMPLATE_SETS = {"translation": TEMPLATES, "informative": INFORMATIVE_TEMPLATES}
ARMS = {"plain": "next5", "progress": "next5_progress", "shuffled": "next5_shuffled"}
# per-sample results.json keys averaged per video: the model's and the references'
SCORES = ("ssim", "psnr", "motion_psnr", "latent_copy_ssim", "latent_copy_psnr", "latent_copy_motion_psnr",
          "baseline_ssim", "baseline_psnr", "baseline_motion_psnr",
          "autoencoder_ssim", "autoencoder_psnr", "autoencoder_motion_psnr")
REFERENCES = {"latent copy": "latent_copy_", "copy frame": "baseline_", "VAE ceiling": "autoencoder_"}
TESTED = ("ssim", "motion_psnr")
COMPARISONS = (("progress - shuffled", "shuffled", "progress"),   # (name, arm A, arm B): B - A
               ("shuffled - plain", "plain", "shuffled"),
               ("progress - plain", "plain", "progress"))


def make_data(root: Path, profile: Profile, args) -> tuple:
    """The profile's synthetic SSv2 restricted to the --template-set, its frame cache, train and eval-set entries."""
    data = root / "data"
    write_synthetic_ssv2(data, replace(
        profile.synthetic, seed=args.data_seed,
        templates=tuple(label_key_of(t) for t in TEMPLATE_SETS[args.template_set]),
        task_train_per_template=args.train_per_template, task_val_per_template=args.val_per_template,
        other_train_per_template=0, other_val_per_template=0, num_test=0, short_fraction=0.0))
    filter_annotations(data, profile.filter)
    ann = data / "annotations"
    train = load_filtered(ann / TRAIN_FILE)
    sets = {s: load_filtered(ann / f) for s, f in EVAL_SETS.items()}
    r = profile.pix2pix_resolution
    build_frame_cache(data, r, [e["id"] for e in train + [e for v in sets.values() for e in v]])
    return open_frame_cache(data, r), train, sets


def build_base(root: Path, profile: Profile, cache, train: list[dict], sets: dict, base_steps) -> Path:
    """The `pix2pix_base` stand-in on these training videos (their action texts, the basic set's
    frame 20 held out for the VAE round trip), as the asset builds it."""
    standins = profile.standins
    if base_steps:
        standins = replace(standins, autoencoder=replace(standins.autoencoder, steps=base_steps),
                           instruct=replace(standins.instruct, steps=base_steps), corpus=None)
    entries = [e for e in train if e["id"] in cache]
    ids, texts = [e["id"] for e in entries], [action_text(e, profile.prompt_text) for e in entries]
    held_out = np.stack([cache.frame(e["id"], min(20, cache.num_frames(e["id"]) - 1))
                         for e in sets["basic"] if e["id"] in cache])
    version = sha256_json({"frame_cache": cache.version, "videos": ids, "texts": texts})
    built = build_standin_pix2pix(root / "pretrained", [cache.frames(v) for v in ids], standins, version,
                                  texts=texts, eval_frames=held_out, log=print)
    return built.path


def train_config(profile: Profile, args, root: Path, train_seed: int):
    """`profile.pix2pix_train` seeded with the training seed, its length from --steps / --epochs if given."""
    config = replace(profile.pix2pix_train, seed=train_seed, latent_cache_dir=str(root / "latent_cache"))
    if args.epochs:
        config = replace(config, num_train_epochs=args.epochs, max_train_steps=None)
    if args.steps:
        config = replace(config, max_train_steps=args.steps)
    return config


def sampling_config(profile: Profile, variant, entries: list[dict], k: int) -> SamplingConfig:
    """The `evaluation` asset's SamplingConfig for `variant`, on every video of `entries`, with
    sampling seed `profile.sampling.seed + k`."""
    sampling = replace(profile.sampling, input_idx=variant.input_idx, target_idx=variant.target_idx,
                       add_progress=variant.add_progress, progress_shuffle_seed=variant.shuffle_seed,
                       prompt_text=profile.prompt_text)
    return replace(sampling, num_samples=len(entries), seed=profile.sampling.seed + k)


def run_arm(arm: str, base: Path, cache, train: list[dict], sets: dict, root: Path, profile: Profile,
            args, train_seed: int) -> tuple[dict[str, list[dict]], int]:
    """Fine-tune one arm with one training seed; ({video id: [per-sample scores, one per sampling
    seed]}, optimizer steps)."""
    variant = VARIANTS[ARMS[arm]]
    pairs = FramePairDataset.for_variant(cache, train, variant, prompt_text=profile.prompt_text)
    result = train_pix2pix(base, pairs, train_config(profile, args, root, train_seed),
                           root / f"{variant.name}-s{train_seed}")
    scores: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for k in range(args.sample_seeds):
        for s, entries in sets.items():
            res = evaluate_model(result.model_dir, cache, entries, sampling_config(profile, variant, entries, k),
                                 root / f"eval-{variant.name}-s{train_seed}-k{k}-{s}")
            for row in res.samples:
                scores.setdefault(row["video_id"], []).append({m: row[m] for m in SCORES})
    moved = sum(p != t for p, t in zip(pairs.percents, pairs.true_percents))
    print(f"  {arm:9s} seed {train_seed}: {result.steps} steps on {len(pairs)} pairs in {result.seconds:.0f}s"
          + (f" ({moved} prompts carry another video's percent)" if variant.shuffled_progress else "")
          + f"; sampled {len(scores)} videos x {args.sample_seeds} in {time.perf_counter() - t0:.0f}s, "
          f"SSIM {np.mean([r['ssim'] for v in scores.values() for r in v]):.4f}", flush=True)
    return scores, result.steps


def per_video_means(runs: list[dict[str, list[dict]]]) -> dict[str, dict[str, float]]:
    """{video: {score: mean over training x sampling seeds}} over the videos every run scored."""
    ids = sorted(set.intersection(*(set(r) for r in runs)))
    return {v: {m: float(np.mean([row[m] for r in runs for row in r[v]])) for m in SCORES} for v in ids}


def summarise(per_arm: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Means per arm and reference, and the paired tests (by video) of the comparisons and of each
    arm against its latent copy."""
    ids = sorted(set.intersection(*(set(p) for p in per_arm.values())))

    def col(arm: str, key: str) -> list[float]:
        return [per_arm[arm][v][key] for v in ids]

    means = {arm: {m: float(np.mean(col(arm, m))) for m in ("ssim", "psnr", "motion_psnr")} for arm in ARMS}
    # references come from the plain arm's results (fine-tuning leaves the VAE frozen, so they are
    # the same in every arm)
    means.update({name: {m: float(np.mean(col("plain", p + m))) for m in ("ssim", "psnr", "motion_psnr")}
                  for name, p in REFERENCES.items()})
    tests = [{"comparison": name, "metric": m, **paired_test(col(a, m), col(b, m))}
             for name, a, b in COMPARISONS for m in TESTED]
    tests += [{"comparison": f"{arm} - latent copy", "metric": m, **paired_test(col(arm, "latent_copy_" + m),
                                                                                col(arm, m))}
              for arm in ARMS for m in TESTED]
    return {"videos": len(ids), "means": means, "tests": tests}


def print_table(out: dict) -> None:
    print(f"\nnext5 (frame 20 -> 25) on {out['videos']} validation videos, {out['train_seeds']} training x "
          f"{out['sample_seeds']} sampling seeds, {'/'.join(map(str, out['steps']))} optimizer steps per model:")
    print(f"  {'':20s} {'SSIM':>7s} {'PSNR':>7s} {'motion PSNR':>12s}")
    for name, m in out["means"].items():
        print(f"  {name:20s} {m['ssim']:7.4f} {m['psnr']:7.2f} {m['motion_psnr']:12.2f}")
    print(f"\n  paired by video {'':14s} {'metric':12s} {'diff':>8s} {'95% CI':>19s} {'t':>6s} {'p':>8s} {'n':>4s}")
    for t in out["tests"]:
        print(f"  {t['comparison']:30s} {t['metric']:12s} {t['mean_diff']:+8.4f} "
              f"[{t['ci95_low']:+8.4f},{t['ci95_high']:+8.4f}] {t['t']:6.2f} {t['p']:8.3g} {t['n']:4d}"
              + (f"  ({t['reason']})" if t.get("reason") else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-template", type=int, default=10)
    ap.add_argument("--val-per-template", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps per model (default: the demo profile's pix2pix_train length)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per model instead of the profile's (--steps wins when both are given)")
    ap.add_argument("--train-seeds", type=int, default=1)
    ap.add_argument("--sample-seeds", type=int, default=2)
    ap.add_argument("--data-seed", type=int, default=3,
                    help="generator seed of this benchmark's videos: not the demo's (0), its stand-in "
                         "corpus's (7) or bench_heldout_seed's (1), so --base can be the demo's stand-in")
    ap.add_argument("--base", type=Path, default=None,
                    help="an InstructPix2Pix folder to start from (e.g. the demo's pix2pix_base stand-in); "
                         "default: build the demo profile's stand-in on this benchmark's training videos")
    ap.add_argument("--base-steps", type=int, default=None,
                    help="VAE and UNet pretraining steps of the built stand-in instead of the profile's, "
                         "without its corpus (smoke runs only)")
    ap.add_argument("--template-set", choices=sorted(TEMPLATE_SETS), default="translation",
                    help="translation: TEMPLATES (the default); informative: INFORMATIVE_TEMPLATES, where the "
                         "percent predicts most of the displacement")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    profile = demo_profile()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="pecn-known-answer-"))
    t0 = time.perf_counter()
    cache, train, sets = make_data(root, profile, args)
    print(f"data: {len(train)} train / {' + '.join(f'{len(v)} {s}' for s, v in sets.items())} val videos of "
          f"{len(TEMPLATE_SETS[args.template_set])} templates ({args.template_set}) in "
          f"{time.perf_counter() - t0:.0f}s ({root})", flush=True)
    base = args.base or build_base(root, profile, cache, train, sets, args.base_steps)
    per_arm: dict[str, dict[str, dict[str, float]]] = {}
    steps: set[int] = set()
    for arm in ARMS:
        runs = []
        for s in range(args.train_seeds):
            scores, n = run_arm(arm, base, cache, train, sets, root, profile, args, s)
            runs.append(scores)
            steps.add(n)
        per_arm[arm] = per_video_means(runs)
    out = {"profile": profile.name, "steps": sorted(steps), "train_seeds": args.train_seeds,
           "sample_seeds": args.sample_seeds, **summarise(per_arm),
           "seconds": round(time.perf_counter() - t0, 1),
           "config": {"synthetic_seed": args.data_seed, "train_per_template": args.train_per_template,
                      "val_per_template": args.val_per_template, "base": str(base),
                      "base_steps": args.base_steps,
                      "pix2pix_train": asdict(replace(train_config(profile, args, root, 0), seed=None)),
                      "sampling": {arm: asdict(sampling_config(profile, VARIANTS[v], sets["basic"], 0))
                                   for arm, v in ARMS.items()},
                      "template_set": args.template_set,
                      "templates": list(TEMPLATE_SETS[args.template_set]),
                      "variants": ARMS},
           "per_video": per_arm}
    print_table(out)
    print(f"total {out['seconds']:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
