"""Synthetic Something-Something V2: SSv2's annotation files plus rendered VP9 videos.

Under `OUT/`: `annotations/something-something-v2-{labels,train,validation,test}.json` in SSv2's exact
format, `videos/{id}.webm` (VP9, 12 fps, 240 x 320..427) and `synthetic_manifest.json` (the
VideoSpecs, to re-render any id). Every video shows the action its template names
(`synthetic_render.py`); everything is deterministic in `SyntheticConfig.seed`.

What the progress prompt adds (the known answer of the demo's t-tests): every action runs over the
whole video (`frame_progress`), so the speed at frame 20 is about 1 / T and T varies. Frame 20 alone
does not tell how far the object moves by frame 21 or 25; "60% of the action has been completed"
does (more so for next5, most for go-and-come-back actions). A shuffled percentage carries none of
it (`benchmarks/bench_known_answer.py`). At `motion_spread` 0 (the demo's) the length is all that
is left to guess; where the object stands stays random.

CLI: python -m pecn_ml.data.synthetic --out DIR [--seed N] [--preset demo|tiny] [--templates KEY ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pecn_ml.data.synthetic_render import FPS, GENERIC_MOTIONS, VideoSpec, render_video, sample_params
from pecn_ml.data.templates import Template, load_task_map, load_templates, task_of_label_key
from pecn_ml.utils.files import atomic_path, write_json_atomic
from pecn_ml.utils.progress import ProgressMeter

LogFn = Callable[[str], None]

ANNOTATION_FILES = {
    "labels": "something-something-v2-labels.json",
    "train": "something-something-v2-train.json",
    "validation": "something-something-v2-validation.json",
    "test": "something-something-v2-test.json",
}
MANIFEST = "synthetic_manifest.json"
SPLITS = ("train", "validation", "test")
SHORT_BELOW = 26          # videos with fewer frames have no frame 25 (0-based)
ID_MAX = 220847           # ids are drawn from 1..ID_MAX like the real ones
_GROUP = re.compile(r"\[([^\]]+)\]")


@dataclass(frozen=True)
class SyntheticConfig:
    """How many synthetic videos to write, of which templates, and how they look."""

    seed: int = 0
    task_train_per_template: int = 3      # per template of the four tasks
    task_val_per_template: int = 2
    other_train_per_template: int = 2     # per template outside the tasks
    other_val_per_template: int = 1
    num_other_templates: Optional[int] = 20   # non-task templates included; None = all 150
    num_test: int = 10                    # test ids (videos written, labels not published)
    short_fraction: float = 0.15          # share of videos shorter than 26 frames
    min_frames: int = 23
    max_frames: int = 64
    min_width: int = 320
    max_width: int = 427
    templates: Optional[tuple[str, ...]] = None   # only these label keys (any case; overrides num_other_templates)
    task_map_path: Optional[str] = None   # task -> label keys JSON; None = pecn_ml/data/tasks.json
    texture: float = 1.0                  # texture contrast of wall, table and objects (0 = flat colours)
    object_scale: float = 1.0             # size of the objects and the hand (1 = SSv2-like)
    motion_spread: float = 1.0            # spread of distance, speed profile, timing: 1 full ranges, 0 the middle
    crf: int = 24                         # libvpx-vp9 constant quality (lower = better)
    cpu_used: int = 8                     # libvpx-vp9 realtime speed (higher = faster)

    def __post_init__(self):
        if self.templates is not None and not isinstance(self.templates, tuple):
            object.__setattr__(self, "templates", tuple(self.templates))
        counts = ("task_train_per_template", "task_val_per_template", "other_train_per_template",
                  "other_val_per_template", "num_test")
        checks = [(getattr(self, n) >= 0, f"{n} must be >= 0, got {getattr(self, n)}") for n in counts] + [
            (self.num_other_templates is None or self.num_other_templates >= 0,
             "num_other_templates must be >= 0 or None"),
            (0.0 <= self.short_fraction <= 1.0, f"short_fraction must be in [0, 1], got {self.short_fraction}"),
            (8 <= self.min_frames <= self.max_frames,
             f"needs 8 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"),
            (self.short_fraction <= 0 or self.min_frames < SHORT_BELOW,
             f"short_fraction > 0 needs min_frames < {SHORT_BELOW}, got {self.min_frames}"),
            (self.short_fraction >= 1 or self.max_frames >= SHORT_BELOW,
             f"short_fraction < 1 needs max_frames >= {SHORT_BELOW}, got {self.max_frames}"),
            (64 <= self.min_width <= self.max_width,
             f"needs 64 <= min_width <= max_width, got {self.min_width}, {self.max_width}"),
            (0.0 <= self.motion_spread <= 1.0, f"motion_spread must be in [0, 1], got {self.motion_spread}"),
            (0 <= self.crf <= 63 and 0 <= self.cpu_used <= 9,
             f"crf must be 0..63 and cpu_used 0..9, got {self.crf}, {self.cpu_used}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SyntheticConfig: {message}")

    @classmethod
    def demo(cls, seed: int = 0, **kw) -> "SyntheticConfig":
        """Demo size: 24 task templates x (10 train + 3 val), 20 others x (1 + 1), 10 test ids."""
        base = dict(seed=seed, task_train_per_template=10, task_val_per_template=3,
                    other_train_per_template=1, other_val_per_template=1,
                    num_other_templates=20, num_test=10)
        return cls(**{**base, **kw})

    @classmethod
    def tiny(cls, seed: int = 0, **kw) -> "SyntheticConfig":
        """Test-suite size: 24 task templates x (1 + 1), 4 others x (1 + 1), 3 test ids."""
        base = dict(seed=seed, task_train_per_template=1, task_val_per_template=1,
                    other_train_per_template=1, other_val_per_template=1,
                    num_other_templates=4, num_test=3)
        return cls(**{**base, **kw})

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Label key (lower case) -> (motion family, fixed motion parameters). Others: GENERIC_MOTIONS.
TEMPLATE_MOTIONS: dict[str, tuple[str, dict[str, float]]] = {
    # move_object
    "moving something up": ("lift", {"dir": -1.0}),
    "moving something down": ("lift", {"dir": 1.0}),
    "moving something across a surface without it falling down": ("slide", {"grip": 2.0}),
    "moving something towards the camera": ("depth", {"grow": 1.0}),
    "moving something away from the camera": ("depth", {"grow": 0.0}),
    "pulling something from right to left": ("slide", {"dir": -1.0, "grip": 1.0}),
    "pulling something from left to right": ("slide", {"dir": 1.0, "grip": 1.0}),
    "pushing something from right to left": ("slide", {"dir": -1.0, "grip": 0.0}),
    "pushing something from left to right": ("slide", {"dir": 1.0, "grip": 0.0}),
    # drop_object
    "dropping something onto something": ("drop", {"rel": 1.0}),
    "dropping something in front of something": ("drop", {"rel": 2.0}),
    "dropping something behind something": ("drop", {"rel": 3.0}),
    "dropping something into something": ("drop_into", {"rel": 4.0}),
    "dropping something next to something": ("drop", {"rel": 5.0}),
    "something falling like a rock": ("drop", {"rel": 0.0}),
    "something falling like a feather or paper": ("feather", {}),
    # cover_object
    "covering something with something": ("cover", {}),
    "putting something on a surface": ("put", {"onto": 0.0}),
    "putting something onto something": ("put", {"onto": 1.0}),
    "putting something on a flat surface without letting it roll": ("put_flat", {"onto": 0.0}),
    "putting something on the edge of something so it is not supported and falls down": ("edge_fall", {}),
    # back_and_forth
    "letting something roll up a slanted surface, so it rolls back down": ("roll_back", {}),
    "plugging something into something but pulling it right out as you remove your hand": ("plug", {}),
    "throwing something in the air and catching it": ("throw_catch", {}),
}


def motion_of(t: Template) -> tuple[str, dict[str, float]]:
    """Motion family and fixed parameters of a template (generic families by index)."""
    key = t.label_key.lower()
    if key in TEMPLATE_MOTIONS:
        family, fixed = TEMPLATE_MOTIONS[key]
        return family, dict(fixed)
    return GENERIC_MOTIONS[t.index % len(GENERIC_MOTIONS)], {}


_GENERAL = ("pen", "cup", "book", "phone", "remote control", "bottle", "box", "wallet", "keys",
            "spoon", "marker", "mug", "lighter", "glasses case", "charger", "toy car", "apple",
            "orange", "ball", "taschentücher", "notebook", "scissors", "comb", "stapler", "sponge",
            "candle", "bottle cap", "lid", "glue stick", "eraser", "tape", "deodorant",
            "hairbrush", "matchbox", "tennis ball", "water bottle", "cell phone", "plate")
_POOLS: dict[str, tuple[str, ...]] = {
    "container": ("cup", "mug", "bowl", "box", "glass", "basket", "jar", "pot", "bin", "drawer"),
    "cover": ("towel", "cloth", "paper", "blanket", "bowl", "napkin", "t-shirt", "taschentücher",
              "plastic bag", "scarf"),
    "light": ("paper", "feather", "tissue", "taschentücher", "leaf", "napkin", "receipt",
              "plastic bag", "piece of paper", "paper towel"),
    "heavy": ("stone", "pen", "phone", "keys", "coin", "battery", "remote control", "bottle cap",
              "book", "wallet"),
    "rollable": ("ball", "bottle", "marker", "can", "orange", "tennis ball", "pen", "toy car",
                 "roll of tape", "apple"),
    "plug": ("charger", "usb cable", "plug", "headphones", "power cord", "usb stick", "cable"),
    "socket": ("socket", "power strip", "laptop", "phone", "extension cord", "wall socket",
               "usb port"),
    "throwable": ("ball", "keys", "apple", "orange", "tennis ball", "pen", "phone", "wallet",
                  "coin", "bottle", "taschentücher"),
}
_SPECIAL: dict[str, tuple[str, ...]] = {
    "something in it": ("water", "coins", "rice", "pens", "sugar", "candies", "beans", "juice"),
    "number of": ("2", "3", "two", "three", "4", "five"),
    "somewhere": ("the table", "a shelf", "a drawer", "the floor", "a bag", "the bed", "a box"),
    "part": ("the lid", "the handle", "a corner", "the cap", "the strap", "the cover", "the top"),
    "some substance": ("playdough", "sand", "flour", "clay", "butter", "dough", "foam"),
    "something soft": ("a pillow", "a sponge", "bread", "a cushion", "a mattress", "foam"),
    "something unbendable": ("a remote control", "a glass", "a stone", "a phone", "a mug"),
    "something that is not tearable": ("a phone", "a cloth", "a plastic bottle", "a spoon",
                                       "a t-shirt", "a wallet"),
    "something that cannot actually stand upright": ("a pen", "a ball", "a marker", "a banana",
                                                     "a spoon", "an egg"),
    "something else that cannot support it": ("a cup", "a pen", "a ball", "a bottle cap",
                                              "a marker", "a glass"),
    "one of many similar things on the table": ("a pen", "one coin", "a marker",
                                                "one of the cards", "a battery", "a candy"),
    "something similar to other things that are already on the table": (
        "a coin", "a pen", "a battery", "a marker", "a card", "a spoon"),
}
# (motion family, placeholder position) -> pool name
_ROLE_POOLS = {("drop_into", 1): "container", ("cover", 1): "cover", ("feather", 0): "light",
               ("roll_back", 0): "rollable", ("put_flat", 0): "rollable", ("plug", 0): "plug",
               ("plug", 1): "socket", ("throw_catch", 0): "throwable"}
# label key (lower) -> {position: earlier position it repeats}
_REPEATS = {"failing to put something into something because something does not fit": {2: 0},
            "pretending to pour something out of something, but something is empty": {2: 1}}
NON_ASCII_FILLER = "taschentücher"


def placeholder_kinds(template: str) -> list[str]:
    """The [..] groups of a template, in order: ["something", "Something", "number of", ...]."""
    return _GROUP.findall(template)


def fill_template(template: str, placeholders: Sequence[str]) -> str:
    """SSv2 label: the template with placeholders filled in order, then lowercased."""
    kinds = placeholder_kinds(template)
    if len(kinds) != len(placeholders):
        raise ValueError(f"template {template!r} has {len(kinds)} placeholders, "
                         f"got {len(placeholders)}: {list(placeholders)}")
    it = iter(placeholders)
    return _GROUP.sub(lambda m: next(it), template).lower()


def _with_article(rng: np.random.Generator, noun: str) -> str:
    r = rng.random()
    if r < 0.2:
        return ("an " if noun[0] in "aeiou" else "a ") + noun
    if r < 0.3:
        return "the " + noun
    return noun


def sample_placeholders(t: Template, motion: str, rng: np.random.Generator) -> tuple[str, ...]:
    """Plausible fillers for each [..] group of a template (special forms get their own pools)."""
    kinds = placeholder_kinds(t.template)
    if len(kinds) != t.placeholders:
        raise ValueError(f"template {t.index} {t.template!r}: {len(kinds)} [..] groups but "
                         f"the template table says {t.placeholders}")
    repeats = _REPEATS.get(t.label_key.lower(), {})
    out: list[str] = []
    for pos, kind in enumerate(kinds):
        low = kind.lower()
        if pos in repeats:
            out.append(out[repeats[pos]])
        elif low != "something":
            if low not in _SPECIAL:
                raise ValueError(f"template {t.index} {t.template!r}: unknown placeholder [{kind}]")
            earlier = [o for k, o in zip(kinds, out) if k.lower() == low]
            out.append(earlier[0] if earlier else str(rng.choice(_SPECIAL[low])))
        else:
            pool_name = _ROLE_POOLS.get((motion, pos))
            if motion == "drop" and pos == 0 and t.placeholders == 1:
                pool_name = "heavy"
            pool = _POOLS[pool_name] if pool_name else _GENERAL
            noun = str(rng.choice([x for x in pool if x not in out] or pool))
            noun = _with_article(rng, noun)
            out.append(noun[0].upper() + noun[1:] if kind == "Something" else noun)
    return tuple(out)


def select_templates(config: SyntheticConfig) -> list[tuple[Template, bool]]:
    """(template, is_task) of every template in the dataset, by label index."""
    templates = load_templates()
    task_of = task_of_label_key(load_task_map(config.task_map_path))
    by_key = {t.label_key.lower(): t for t in templates}
    unknown_tasks = sorted(k for k in task_of if k not in by_key)
    if unknown_tasks:
        raise ValueError(f"task map {config.task_map_path or 'tasks.json'}: unknown label keys "
                         f"{unknown_tasks}")
    if config.templates is not None:
        unknown = [k for k in config.templates if k.lower() not in by_key]
        if unknown:
            raise ValueError(f"SyntheticConfig.templates: unknown label keys {unknown} "
                             f"(use keys like 'Pushing something from left to right')")
        chosen = sorted({by_key[k.lower()].index for k in config.templates})
        return [(templates[i], templates[i].label_key.lower() in task_of) for i in chosen]
    tasks = [t for t in templates if t.label_key.lower() in task_of]
    others = [t for t in templates if t.label_key.lower() not in task_of]
    if config.num_other_templates is not None and config.num_other_templates < len(others):
        rng = np.random.default_rng([config.seed, 7])
        pick = rng.choice(len(others), config.num_other_templates, replace=False)
        others = [others[i] for i in sorted(pick)]
    out = [(t, True) for t in tasks] + [(t, False) for t in others]
    return sorted(out, key=lambda x: x[0].index)


def video_specs(config: SyntheticConfig) -> list[VideoSpec]:
    """Every video of the dataset (train, validation, test), deterministic in config.seed."""
    chosen = select_templates(config)
    if not chosen:
        raise ValueError("SyntheticConfig selects no templates")
    rng = np.random.default_rng(config.seed)
    plan: list[tuple[str, Template]] = []
    for t, is_task in chosen:
        n_tr = config.task_train_per_template if is_task else config.other_train_per_template
        n_va = config.task_val_per_template if is_task else config.other_val_per_template
        plan += [("train", t)] * n_tr + [("validation", t)] * n_va
    for i in rng.integers(0, len(chosen), config.num_test):
        plan.append(("test", chosen[int(i)][0]))
    n = len(plan)
    if n > ID_MAX:
        raise ValueError(f"SyntheticConfig asks for {n} videos, more than {ID_MAX} ids")
    ids = rng.choice(ID_MAX, n, replace=False) + 1
    short = np.zeros(n, bool)
    short[rng.permutation(n)[: int(round(config.short_fraction * n))]] = True

    rows = []
    for k, (split, t) in enumerate(plan):
        if short[k]:
            top = min(SHORT_BELOW - 1, config.max_frames)
            frames = int(rng.integers(config.min_frames, top + 1))
        else:
            frames = int(rng.integers(max(SHORT_BELOW, config.min_frames), config.max_frames + 1))
        width = (config.max_width if rng.random() < 0.4
                 else int(rng.integers(config.min_width, config.max_width + 1)))
        motion, fixed = motion_of(t)
        params = {**sample_params(motion, rng, config.motion_spread), **fixed}
        rows.append(dict(id=str(int(ids[k])), split=split, template_index=t.index,
                         label_key=t.label_key, template=t.template,
                         placeholders=sample_placeholders(t, motion, rng), width=width,
                         num_frames=frames, seed=int(rng.integers(0, 2**31 - 1)), motion=motion,
                         start_idle=int(rng.integers(0, 3)), end_idle=int(rng.integers(0, 3)),
                         params=tuple((name, float(v)) for name, v in params.items()),
                         texture=float(config.texture),
                         object_scale=float(config.object_scale)))
    _ensure_non_ascii(rows)
    return [VideoSpec(label=fill_template(r["template"], r["placeholders"]), **r) for r in rows]


def _ensure_non_ascii(rows: list[dict]) -> None:
    """Give each labelled split at least one raw non-ASCII filler, so encoders are exercised."""
    for split in ("train", "validation"):
        in_split = [r for r in rows if r["split"] == split]
        if not in_split or any(not "".join(r["placeholders"]).isascii() for r in in_split):
            continue
        for r in in_split:
            kinds = placeholder_kinds(r["template"])
            if "something" in kinds:
                pos = kinds.index("something")
                ph = list(r["placeholders"])
                ph[pos] = NON_ASCII_FILLER
                r["placeholders"] = tuple(ph)
                break


def annotation_entry(spec: VideoSpec) -> dict:
    """The SSv2 entry of a video; test entries have the id only."""
    if spec.split == "test":
        return {"id": spec.id}
    return {"id": spec.id, "label": spec.label, "template": spec.template,
            "placeholders": list(spec.placeholders)}


def ssv2_json_text(obj: list | dict) -> str:
    """SSv2's file layout: CRLF lines, one compact entry per line, raw UTF-8 (no \\u escapes)."""
    dump = lambda x: json.dumps(x, ensure_ascii=False, separators=(",", ":"))  # noqa: E731
    if isinstance(obj, dict):
        lines = [f"{dump(k)}:{dump(v)}" for k, v in obj.items()]
        open_, close = "{", "}"
    else:
        lines = [dump(x) for x in obj]
        open_, close = "[", "]"
    if not lines:
        return open_ + close + "\r\n"
    return open_ + "\r\n" + ",\r\n".join(lines) + "\r\n" + close + "\r\n"


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8"))


def labels_dict() -> dict[str, str]:
    """labels.json content: all 174 label keys -> index strings, in index (alphabetical) order."""
    return {t.label_key: str(t.index) for t in load_templates()}


def encode_webm(frames: np.ndarray, path: str | Path, fps: int = FPS, crf: int = 24,
                cpu_used: int = 8) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as WebM/VP9 (yuv420p), atomically; single-threaded
    realtime libvpx, so the bytes are deterministic (odd widths are fine)."""
    import av  # local import: rendering and annotations do not need FFmpeg

    assert frames.ndim == 4 and frames.shape[3] == 3 and frames.dtype == np.uint8, frames.shape
    T, H, W, _ = frames.shape
    path = Path(path)
    with atomic_path(path) as tmp:
        # bitexact: no writing date or muxer version in the container, so the same frames give
        # the same file bytes (and the frame cache, keyed by them, the same version) every time
        with av.open(str(tmp), "w", format="webm", options={"fflags": "+bitexact"}) as c:
            s = c.add_stream("libvpx-vp9", rate=fps)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            s.codec_context.thread_count = 1
            s.options = {"crf": str(crf), "b:v": "0", "deadline": "realtime",
                         "cpu-used": str(cpu_used), "lag-in-frames": "0", "row-mt": "0"}
            for i in range(T):
                fr = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                fr.pts, fr.time_base = i, Fraction(1, fps)
                for pkt in s.encode(fr):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    return path


def _manifest(out_dir: str | Path, part: str) -> tuple[Path, object]:
    """(path, `part` of the manifest under `out_dir`); clear errors naming the file."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no synthetic manifest (was write_synthetic_ssv2 run?)")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))[part]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a synthetic SSv2 manifest: {e!r}") from e


def _old_ids(out_dir: Path) -> set[str]:
    try:
        return {str(d["id"]) for d in _manifest(out_dir, "specs")[1]}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return set()


def write_synthetic_ssv2(out_dir: str | Path, config: Optional[SyntheticConfig] = None,
                         log: Optional[LogFn] = None) -> dict:
    """Render, encode and annotate a synthetic SSv2 under `out_dir`; returns a summary dict.

    The manifest is written last, so it marks a complete dataset; videos of a previous manifest
    that are not in this one are removed, nothing else is touched."""
    config = config or SyntheticConfig()
    t0 = time.perf_counter()
    out = Path(out_dir)
    specs = video_specs(config)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    stale = _old_ids(out) - {s.id for s in specs}
    for vid in sorted(stale):
        (videos / f"{vid}.webm").unlink(missing_ok=True)

    meter = ProgressMeter("synthetic SSv2 videos", total=len(specs), log=log, unit="videos")
    total_bytes = total_frames = 0
    for spec in specs:
        path = encode_webm(render_video(spec), videos / f"{spec.id}.webm", spec.fps,
                           config.crf, config.cpu_used)
        total_bytes += path.stat().st_size
        total_frames += spec.num_frames
        meter.update(1)

    ann = out / "annotations"
    _write_text_atomic(ann / ANNOTATION_FILES["labels"], ssv2_json_text(labels_dict()))
    order = np.random.default_rng([config.seed, 3])
    for split in SPLITS:
        entries = [annotation_entry(s) for s in specs if s.split == split]
        entries = [entries[i] for i in order.permutation(len(entries))]
        _write_text_atomic(ann / ANNOTATION_FILES[split], ssv2_json_text(entries))

    per_template: dict[str, dict[str, int]] = {}
    for s in specs:
        per_template.setdefault(s.label_key, dict.fromkeys(SPLITS, 0))[s.split] += 1
    summary = {
        "path": str(out),
        "num_videos": len(specs),
        "splits": {sp: sum(s.split == sp for s in specs) for sp in SPLITS},
        "per_template": per_template,
        "num_templates": len(per_template),
        "short_videos": sum(s.num_frames < SHORT_BELOW for s in specs),
        "frames": total_frames,
        "video_bytes": total_bytes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(out / MANIFEST, {"format": "pecn-synthetic-ssv2/1",
                                       "config": asdict(config), "summary": summary,
                                       "specs": [s.to_json() for s in specs]})
    if log is not None:
        log(f"synthetic SSv2: {len(specs)} videos ({summary['splits']}) in "
            f"{summary['seconds']:.1f}s -> {out}")
    return summary


def load_specs(out_dir: str | Path) -> dict[str, VideoSpec]:
    """id -> VideoSpec from `out_dir/synthetic_manifest.json` (to re-render any video)."""
    path, rows = _manifest(out_dir, "specs")
    return {s.id: s for s in (VideoSpec.from_json(d, where=str(path)) for d in rows)}


def load_config(out_dir: str | Path) -> SyntheticConfig:
    """The SyntheticConfig a dataset under `out_dir` was written with."""
    path, config = _manifest(out_dir, "config")
    try:
        return SyntheticConfig.from_dict(config)
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: bad config in manifest: {e!r}") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pecn_ml.data.synthetic",
                                 description="Write a synthetic Something-Something V2 dataset.")
    ap.add_argument("--out", required=True, help="output folder (annotations/, videos/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", choices=("demo", "tiny"), default="demo")
    ap.add_argument("--templates", nargs="+", metavar="KEY",
                    help='label keys to include, e.g. "Pushing something from left to right"')
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    preset = SyntheticConfig.demo if args.preset == "demo" else SyntheticConfig.tiny
    kw = {"templates": tuple(args.templates)} if args.templates else {}
    try:
        config = preset(seed=args.seed, **kw)
        log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
        summary = write_synthetic_ssv2(args.out, config, log=log)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "per_template"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
