"""Synthetic SSv2: exact annotation format, decodable VP9 videos that show the named motion."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from pecn_ml.data import synthetic as syn
from pecn_ml.data.synthetic_render import PLACEMENT_PARAMS, build_scene, frame_progress, object_states, render_video
from pecn_ml.data.templates import load_task_map, load_templates

REPO = Path(__file__).resolve().parents[3]
FILES = syn.ANNOTATION_FILES
GROUP = re.compile(r"\[([^\]]+)\]")
TASK_KEYS = [k for keys in load_task_map().values() for k in keys]
KEY_ORDER = ["id", "label", "template", "placeholders"]


def decode(path: Path) -> tuple[np.ndarray, dict]:
    """All frames through the container's own stream: (T, H, W, 3) uint8, and stream facts
    (read while the container is open: a closed stream's attributes are garbage)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        info = {"codec": stream.codec_context.name, "rate": stream.average_rate,
                "format": c.format.name}
        decoded = list(c.decode(video=0))
        info["times"] = np.array([f.time for f in decoded])
        frames = [f.to_ndarray(format="rgb24") for f in decoded]
    return np.stack(frames), info


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T,) per-frame PSNR in dB of two (T, H, W, 3) uint8 videos."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssv2_tiny")
    logs: list[str] = []
    summary = syn.write_synthetic_ssv2(out, syn.SyntheticConfig.tiny(), log=logs.append)
    return out, summary, logs


def read_entries(out: Path, split: str) -> list[dict]:
    return json.loads((out / "annotations" / FILES[split]).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- format
def test_layout_and_summary(tiny):
    out, summary, logs = tiny
    for name in FILES.values():
        assert (out / "annotations" / name).is_file(), name
    specs = syn.load_specs(out)
    videos = sorted(p.stem for p in (out / "videos").glob("*.webm"))
    assert videos == sorted(specs)
    assert not list(out.rglob("*.tmp")), "temp files left behind"
    assert summary["num_videos"] == len(specs) == sum(summary["splits"].values())
    assert summary["splits"]["test"] == 3
    assert summary["num_templates"] == len(summary["per_template"]) == 24 + 4
    assert all(c["train"] == c["validation"] == 1 for c in summary["per_template"].values())
    assert any("59/59" in line for line in logs), logs


@pytest.mark.parametrize("split", ["labels", "train", "validation", "test"])
def test_file_bytes_crlf_compact_raw_utf8(tiny, split):
    out, _, _ = tiny
    raw = (out / "annotations" / FILES[split]).read_bytes()
    text = raw.decode("utf-8")
    assert "\\u" not in text, "non-ASCII must be written raw, not escaped"
    assert text.count("\n") == text.count("\r\n") > 2, "every line ends with CRLF"
    lines = text.split("\r\n")
    assert lines[0] in ("[", "{") and lines[-2] in ("]", "}") and lines[-1] == ""
    body = lines[1:-2]
    assert all(line.endswith(",") for line in body[:-1]) and not body[-1].endswith(",")
    for line in body:
        item = line.rstrip(",")
        if split == "labels":
            k, v = json.loads("{" + item + "}").popitem()
            assert item == json.dumps(k, ensure_ascii=False) + ":" + json.dumps(v)
            continue
        obj = json.loads(item)
        assert item == json.dumps(obj, ensure_ascii=False, separators=(",", ":")), "not compact"
        if split == "test":
            assert list(obj) == ["id"]
        else:
            assert list(obj) == KEY_ORDER
            assert all(isinstance(obj[k], str) for k in KEY_ORDER[:3])
            assert all(isinstance(p, str) for p in obj["placeholders"])
    if split in ("train", "validation"):
        assert "taschentücher".encode("utf-8") in raw


def test_labels_json_174_alphabetical(tiny):
    out, _, _ = tiny
    text = (out / "annotations" / FILES["labels"]).read_text(encoding="utf-8")
    pairs = json.loads(text, object_pairs_hook=list)
    keys = [k for k, _ in pairs]
    assert len(pairs) == 174 and keys == sorted(keys)
    assert [v for _, v in pairs] == [str(i) for i in range(174)]
    assert keys == [t.template.replace("[", "").replace("]", "") for t in load_templates()]


def test_entry_invariants_and_ids(tiny):
    out, _, _ = tiny
    labels = json.loads((out / "annotations" / FILES["labels"]).read_text(encoding="utf-8"))
    ids = []
    for split in ("train", "validation"):
        for e in read_entries(out, split):
            groups = GROUP.findall(e["template"])
            assert len(groups) == len(e["placeholders"]) >= 1, e
            it = iter(e["placeholders"])
            assert e["label"] == GROUP.sub(lambda m: next(it), e["template"]).lower(), e
            assert e["template"].replace("[", "").replace("]", "") in labels, e
            ids.append(e["id"])
    ids += [e["id"] for e in read_entries(out, "test")]
    assert len(ids) == len(set(ids)) == 59
    assert all(re.fullmatch(r"[1-9][0-9]*", i) for i in ids)
    nums = sorted(int(i) for i in ids)
    assert np.diff(nums).min() >= 1 and len(set(np.diff(nums))) > 1, "ids look sequential"


def test_every_task_template_and_some_others_present(tiny):
    out, _, _ = tiny
    for split in ("train", "validation"):
        keys = {e["template"].replace("[", "").replace("]", "") for e in read_entries(out, split)}
        assert set(TASK_KEYS) <= keys, set(TASK_KEYS) - keys
        assert len(keys - set(TASK_KEYS)) == 4
    specs = syn.load_specs(out).values()
    assert {s.motion for s in specs if s.label_key not in TASK_KEYS} <= set(syn.GENERIC_MOTIONS)


def test_placeholders_for_all_174_templates():
    rng = np.random.default_rng(0)
    special = set(syn._SPECIAL)
    for t in load_templates():
        motion, _ = syn.motion_of(t)
        for _ in range(3):
            ph = syn.sample_placeholders(t, motion, rng)
            kinds = GROUP.findall(t.template)
            assert len(ph) == len(kinds) == t.placeholders, t
            assert all(p and p == p.strip() for p in ph), (t, ph)
            for kind, p in zip(kinds, ph):
                if kind.lower() in special:
                    assert p in syn._SPECIAL[kind.lower()], (t, kind, p)
                if kind == "Something":
                    assert p[0].isupper(), (t, p)
            label = syn.fill_template(t.template, ph)
            assert label == label.lower() and "[" not in label
    with pytest.raises(ValueError, match="placeholders"):
        syn.fill_template("Moving [something] up", ["a", "b"])


# ----------------------------------------------------------------------------- videos
def test_videos_decode_exact_frames_size_fps(tiny):
    out, _, _ = tiny
    specs = syn.load_specs(out)
    widths, lengths = [], []
    for i, (vid, spec) in enumerate(sorted(specs.items())):
        frames, info = decode(out / "videos" / f"{vid}.webm")
        assert frames.shape == (spec.num_frames, 240, spec.width, 3), vid
        assert info["codec"] == "vp9" and info["rate"] == 12, (vid, info)
        assert "webm" in info["format"].split(","), info
        assert info["times"][0] == 0 and np.allclose(np.diff(info["times"]), 1 / 12, atol=2e-3)
        widths.append(spec.width)
        lengths.append(spec.num_frames)
        if i % 6 == 0:                     # decoded frames stay close to the renderer
            p = psnr(frames, render_video(spec))
            assert p.mean() > 32 and p.min() > 30, (vid, spec.motion, p.min())
    assert 320 <= min(widths) and max(widths) == 427, "427 (odd) width must occur"
    assert min(lengths) >= 23 and max(lengths) <= 64
    assert 0 < sum(n < 26 for n in lengths) < len(lengths) / 2


def test_progress_monotone_and_visible(tiny):
    out, _, _ = tiny
    for spec in list(syn.load_specs(out).values())[::4]:
        p = frame_progress(spec)
        assert p[0] == 0 and p[-1] == 1 and (np.diff(p) >= 0).all()
        assert spec.start_idle <= 2
        assert np.abs(p - np.arange(spec.num_frames) / spec.num_frames).max() < 0.15
        frames = render_video(spec).astype(np.int16)
        s, e = spec.start_idle, spec.num_frames - 1 - spec.end_idle
        changed = (np.abs(frames[s:e + 1] - frames[s]).max(-1) > 25).mean(axis=(1, 2))  # (T',)
        assert changed.max() > 0.003, (spec.label_key, spec.motion, changed.max())
        if spec.motion not in ("roll_back", "plug", "throw_catch"):   # one-way actions
            assert changed[-1] > 0.003, (spec.label_key, spec.motion, changed[-1])


# ----------------------------------------------------------------------------- motions
@pytest.fixture(scope="module")
def task_specs():
    cfg = syn.SyntheticConfig.tiny(templates=tuple(TASK_KEYS), task_train_per_template=3,
                                   task_val_per_template=0, num_test=0, seed=5)
    out: dict[str, list] = {}
    for s in syn.video_specs(cfg):
        out.setdefault(s.label_key, []).append(s)
    return out


def action(spec, states):
    """States of the frames where the action runs (idle frames cut off)."""
    return states[spec.start_idle: spec.num_frames - spec.end_idle]


@pytest.mark.parametrize("key, sign", [
    ("Pushing something from left to right", 1), ("Pulling something from left to right", 1),
    ("Pushing something from right to left", -1), ("Pulling something from right to left", -1)])
def test_horizontal_direction(task_specs, key, sign):
    for spec in task_specs[key]:
        st = action(spec, object_states(spec))
        dx = np.diff(st[:, 0]) * sign
        assert (dx >= -1e-9).all() and st[-1, 0] * sign - st[0, 0] * sign > 0.3 * spec.width
        assert np.ptp(st[:, 1]) < 1e-6


def test_across_surface_up_down_depth(task_specs):
    for spec in task_specs["Moving something across a surface without it falling down"]:
        st = action(spec, object_states(spec))
        assert abs(st[-1, 0] - st[0, 0]) > 0.3 * spec.width and np.ptp(st[:, 1]) < 1e-6
    for key, sign in (("Moving something up", -1), ("Moving something down", 1)):
        for spec in task_specs[key]:
            y = action(spec, object_states(spec))[:, 1] * sign
            assert (np.diff(y) >= -1e-9).all() and y[-1] - y[0] > 40, key
    for key, sign in (("Moving something towards the camera", 1),
                      ("Moving something away from the camera", -1)):
        for spec in task_specs[key]:
            s = action(spec, object_states(spec))[:, 2]
            assert (np.diff(s) * sign > 0).all() and max(s[0], s[-1]) / min(s[0], s[-1]) > 1.6


DROPS = ["Dropping something onto something", "Dropping something in front of something",
         "Dropping something behind something", "Dropping something into something",
         "Dropping something next to something", "Something falling like a rock"]


@pytest.mark.parametrize("key", DROPS)
def test_drop_falls_with_growing_speed(task_specs, key):
    for spec in task_specs[key]:
        y = action(spec, object_states(spec))[:, 1]
        n = len(y)
        fall = int(np.floor(spec.param("land") * (n - 1)))       # frames before landing
        v = np.diff(y[: fall + 1])
        assert (v > 0).all() and (np.diff(v) > 0).all(), (key, v)   # quadratic in time
        assert y[-1] - y[0] > 50 and np.allclose(y[fall + 1:], y[-1])


def test_feather_sways_down(task_specs):
    for spec in task_specs["Something falling like a feather or paper"]:
        st = action(spec, object_states(spec))
        assert (np.diff(st[:, 1]) >= 0).all() and st[-1, 1] - st[0, 1] > 50
        dx = np.diff(st[:, 0])
        assert (np.sign(dx[:-1]) != np.sign(dx[1:])).any(), "no sway"


def test_cover_and_put(task_specs):
    for spec in task_specs["Covering something with something"]:
        st = action(spec, object_states(spec))        # tracks the cover
        target = spec.param("xf") * spec.width
        d = np.abs(st[:, 0] - target)
        assert d[0] > 0.2 * spec.width and d[-1] < 1 and (np.diff(d) <= 1e-9).all()
    for key in ("Putting something on a surface", "Putting something onto something",
                "Putting something on a flat surface without letting it roll"):
        for spec in task_specs[key]:
            y = action(spec, object_states(spec))[:, 1]
            assert (np.diff(y) >= -1e-9).all() and y[-1] - y[0] > 30, key
    for spec in task_specs["Putting something on the edge of something so it is not supported "
                           "and falls down"]:
        st = action(spec, object_states(spec))
        assert abs(st[-1, 3]) == pytest.approx(np.pi / 2) and st[-1, 1] > st[0, 1]


@pytest.mark.parametrize("key, axis", [
    ("Throwing something in the air and catching it", 1),
    ("Letting something roll up a slanted surface, so it rolls back down", 0),
    ("Plugging something into something but pulling it right out as you remove your hand", 0)])
def test_back_and_forth_goes_and_returns(task_specs, key, axis):
    for spec in task_specs[key]:
        st = action(spec, object_states(spec))
        dist = np.abs(st[:, axis] - st[0, axis])
        far = int(np.argmax(dist))
        assert dist[far] > 30 and dist[-1] < 1.0, (key, dist)
        assert 0.2 * len(dist) < far < 0.8 * len(dist)
        assert (np.diff(dist[: far + 1]) >= -1e-9).all() and (np.diff(dist[far:]) <= 1e-9).all()


def test_track_sits_on_the_rendered_object(task_specs):
    for key in ("Pushing something from left to right", "Moving something up",
                "Something falling like a rock", "Throwing something in the air and catching it"):
        spec = task_specs[key][0]
        frames, track = render_video(spec, return_track=True)
        bg = build_scene(spec).bg[:, 80:80 + spec.width]
        bg = (bg * 255 + 0.5).astype(np.int16)
        for t in range(0, spec.num_frames, 5):
            x, y = np.round(track[t]).astype(int)
            win = (slice(y - 2, y + 3), slice(x - 2, x + 3))
            patch = np.abs(frames[t][win].astype(np.int16) - bg[win])
            assert patch.mean() > 10, (key, t)


def test_generic_motions_for_other_templates():
    others = [t for t in load_templates() if t.label_key not in TASK_KEYS]
    assert len(others) == 150
    fams = {syn.motion_of(t)[0] for t in others}
    assert fams == set(syn.GENERIC_MOTIONS)
    task_fams = {syn.motion_of(t)[0] for t in load_templates() if t.label_key in TASK_KEYS}
    assert not fams & task_fams


# ----------------------------------------------------------------------------- determinism, CLI
SMALL = ("Pushing something from left to right", "Something falling like a rock",
         "Folding something")


def test_determinism_and_cli(tmp_path):
    cfg = syn.SyntheticConfig.tiny(templates=SMALL)
    specs = syn.video_specs(cfg)
    assert specs == syn.video_specs(cfg)
    assert specs != syn.video_specs(syn.SyntheticConfig.tiny(templates=SMALL, seed=1))
    syn.write_synthetic_ssv2(tmp_path / "a", cfg)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "pecn_ml.data.synthetic", "--out",
                          str(tmp_path / "b"), "--preset", "tiny", "--quiet",
                          "--templates", *SMALL],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["num_videos"] == len(specs) == 3 * 2 + 3
    for name in FILES.values():
        a = (tmp_path / "a" / "annotations" / name).read_bytes()
        assert a == (tmp_path / "b" / "annotations" / name).read_bytes(), name
    loaded = syn.load_specs(tmp_path / "b")
    assert syn.load_config(tmp_path / "b") == cfg
    assert loaded == {s.id: s for s in specs}
    for s in specs:
        fa, _ = decode(tmp_path / "a" / "videos" / f"{s.id}.webm")
        fb, _ = decode(tmp_path / "b" / "videos" / f"{s.id}.webm")
        assert np.array_equal(fa, fb), s.id
    again = render_video(loaded[specs[0].id])
    assert np.array_equal(again, render_video(specs[0]))

    bad = subprocess.run([sys.executable, "-m", "pecn_ml.data.synthetic", "--out",
                          str(tmp_path / "c"), "--templates", "Juggling something"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Juggling something" in bad.stderr


def test_rewrite_removes_only_its_stale_videos(tmp_path):
    syn.write_synthetic_ssv2(tmp_path, syn.SyntheticConfig.tiny(templates=SMALL[:1], num_test=0))
    first = set(syn.load_specs(tmp_path))
    keep = tmp_path / "videos" / "not_ours.webm"
    keep.write_bytes(b"x")
    syn.write_synthetic_ssv2(tmp_path, syn.SyntheticConfig.tiny(templates=SMALL[1:2], num_test=0,
                                                                 seed=1))
    second = set(syn.load_specs(tmp_path))
    left = {p.stem for p in (tmp_path / "videos").glob("*.webm")}
    assert first - second and left == second | {"not_ours"}


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Juggling"):
        syn.video_specs(syn.SyntheticConfig(templates=("Juggling something",)))
    with pytest.raises(ValueError, match="short_fraction"):
        syn.SyntheticConfig(short_fraction=1.5)
    with pytest.raises(ValueError, match="min_frames"):
        syn.SyntheticConfig(min_frames=30, max_frames=20)
    with pytest.raises(FileNotFoundError, match="synthetic_manifest.json"):
        syn.load_specs(tmp_path)
    (tmp_path / syn.MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="synthetic_manifest.json"):
        syn.load_specs(tmp_path)
    (tmp_path / syn.MANIFEST).write_text('{"specs": [{"id": "1"}]}', encoding="utf-8")
    with pytest.raises(ValueError, match="synthetic_manifest.json"):
        syn.load_specs(tmp_path)


def test_presets_sizes():
    demo = syn.video_specs(syn.SyntheticConfig.demo())
    splits = {sp: sum(s.split == sp for s in demo) for sp in syn.SPLITS}
    assert splits == {"train": 24 * 10 + 20, "validation": 24 * 3 + 20, "test": 10}
    assert syn.ssv2_json_text([]) == "[]\r\n"


def test_texture_and_object_scale_knobs():
    """The demo's knobs: texture 0 gives flat walls and objects, object_scale grows the objects;
    the defaults render what they always did, and the manifest round-trips both."""
    config = syn.SyntheticConfig.tiny(templates=("Pushing something from left to right",),
                                      task_train_per_template=1, task_val_per_template=0, num_test=0,
                                      short_fraction=0.0, min_frames=26, max_frames=30)
    plain = syn.video_specs(config)[0]
    assert (plain.texture, plain.object_scale) == (1.0, 1.0)
    flat = syn.video_specs(dataclasses.replace(config, texture=0.0, object_scale=1.5))[0]
    assert (flat.id, flat.seed, flat.texture, flat.object_scale) == (plain.id, plain.seed, 0.0, 1.5)
    assert syn.VideoSpec.from_json(flat.to_json()) == flat and syn.VideoSpec.from_json(
        {k: v for k, v in plain.to_json().items() if k not in ("texture", "object_scale")}) == plain
    a, b = render_video(plain)[:1], render_video(flat)[:1]                  # (1, 240, W, 3)
    wall_a, wall_b = a[0, :40].reshape(-1, 3).astype(float), b[0, :40].reshape(-1, 3).astype(float)
    assert wall_b.std(axis=0).max() < 0.6 < wall_a.std(axis=0).max()      # flat vs textured wall
    sa, sb = build_scene(plain, background=False), build_scene(flat, background=False)
    assert sb.A.w == pytest.approx(1.5 * sa.A.w) and sb.palm.w == pytest.approx(1.5 * sa.palm.w)


def test_motion_spread_knob():
    """motion_spread 0 puts every video of a template at the middle of each motion range (same
    distance, speed profile and timing), keeps placement, signs, ids, lengths and scenes random, and the
    default draws what it always did; out-of-range values are refused."""
    config = syn.SyntheticConfig.tiny(templates=("Pushing something from left to right", "Moving something up",
                                                 "Putting something on a surface"),
                                      task_train_per_template=4, task_val_per_template=0, num_test=0)
    full = syn.video_specs(config)
    same = syn.video_specs(dataclasses.replace(config, motion_spread=0.0))
    assert [(s.id, s.num_frames, s.seed, s.placeholders, s.start_idle) for s in full] == \
        [(s.id, s.num_frames, s.seed, s.placeholders, s.start_idle) for s in same]
    by_template: dict[int, set] = {}
    for s in same:
        by_template.setdefault(s.template_index, set()).add(
            tuple((k, v) for k, v in s.params if k not in ("dir", "side", *PLACEMENT_PARAMS)))
    assert all(len(v) == 1 for v in by_template.values())                 # one motion per template
    offsets = [dict(s.params)["off"] for s in same if s.motion == "slide"]
    assert len(set(offsets)) == len(offsets)                               # placement stays random
    assert len({tuple(s.params) for s in full}) == len(full)               # the default varies
    slide = dict(same[0].params) if same[0].motion == "slide" else dict(
        next(s for s in same if s.motion == "slide").params)
    assert slide["ease"] == pytest.approx(0.5) and slide["dist"] == pytest.approx((0.35 + 0.6) / 2)
    assert syn.video_specs(dataclasses.replace(config, motion_spread=1.0)) == full
    with pytest.raises(ValueError, match="motion_spread"):
        syn.SyntheticConfig(motion_spread=1.5)
