"""SSv2 annotation parsing, validation, task filtering and seeded sampling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pecn_ml.data import annotations as ann
from pecn_ml.data.annotations import (AnnotationError, FilterConfig, filter_annotations, find_annotation_files,
                                      load_filtered, validate_video_id)
from pecn_ml.data.templates import load_templates

TEMPLATES = {t.label_key: t.template for t in load_templates()}
LABELS = {t.label_key: str(t.index) for t in load_templates()}

# (template, task or None) — includes the capitalised template and a substring trap
MOVE = "Moving [something] up"
PUSH = "Pushing [something] from left to right"
DROP = "Dropping [something] onto [something]"
ROCK = "[Something] falling like a rock"           # capitalised: must map to drop_object
FEATHER = "[Something] falling like a feather or paper"
COVER = "Covering [something] with [something]"
ONTO = "Putting [something] onto [something]"
TRAP = "Putting [something] onto [something else that cannot support it] so it falls down"  # no task
ROLL = "Letting [something] roll up a slanted surface, so it rolls back down"
THROW = "Throwing [something] in the air and catching it"
OTHER = "Closing [something]"


def entry(vid, template, obj="taschentücher"):
    n = template.count("[")
    placeholders = [obj] * n
    label = template
    for p in placeholders:
        label = label[:label.index("[")] + p + label[label.index("]") + 1:]
    return {"id": str(vid), "label": label.lower(), "template": template, "placeholders": placeholders}


def write_list(path: Path, entries, crlf=True):
    """Like the official files: one compact object per line, CRLF, raw UTF-8."""
    nl = "\r\n" if crlf else "\n"
    body = ("," + nl).join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries)
    path.write_bytes(("[" + nl + body + nl + "]" + nl).encode("utf-8"))


def write_dataset(root: Path, train, val, labels=None, short=False, test=None):
    d = root / "annotations"
    d.mkdir(parents=True, exist_ok=True)
    name = (lambda r: f"{r}.json") if short else (lambda r: f"something-something-v2-{r}.json")
    (d / name("labels")).write_text(json.dumps(labels or LABELS, ensure_ascii=False), encoding="utf-8")
    write_list(d / name("train"), train)
    write_list(d / name("validation"), val)
    write_list(d / name("test"), test if test is not None else [{"id": "999999"}])
    return root


def composition():
    """Train: move 5 (3 MOVE + 2 PUSH), drop 4 (2 DROP, 1 ROCK, 1 FEATHER), cover 3, backforth 2,
    plus 2 TRAP + 3 OTHER (no task). Validation: move 2, drop 3 (all ROCK), cover 1, backforth 4."""
    train, i = [], 1000
    for tpl, n in [(MOVE, 3), (PUSH, 2), (DROP, 2), (ROCK, 1), (FEATHER, 1), (COVER, 2), (ONTO, 1),
                   (TRAP, 2), (OTHER, 3), (ROLL, 1), (THROW, 1)]:
        for _ in range(n):
            train.append(entry(i, tpl))
            i += 7
    val, i = [], 50
    for tpl, n in [(MOVE, 2), (ROCK, 3), (COVER, 1), (ROLL, 2), (THROW, 2), (OTHER, 2)]:
        for _ in range(n):
            val.append(entry(i, tpl))
            i += 3
    return train, val


def test_exact_counts_on_known_composition(tmp_path):
    train, val = composition()
    write_dataset(tmp_path, train, val)
    cfg = FilterConfig(train_per_task=3, val_per_task=2)
    res = filter_annotations(tmp_path, cfg)
    assert res.available == {"train": {"move_object": 5, "drop_object": 4, "cover_object": 3, "back_and_forth": 2},
                             "validation": {"move_object": 2, "drop_object": 3, "cover_object": 1,
                                            "back_and_forth": 4}}
    assert res.counts == {"train": {"move_object": 3, "drop_object": 3, "cover_object": 3, "back_and_forth": 2},
                          "validation": {"move_object": 2, "drop_object": 2, "cover_object": 1,
                                         "back_and_forth": 2}}
    assert res.rejected == {}
    ann_dir = tmp_path / "annotations"
    files = {p.name: load_filtered(p) for p in ann_dir.glob("*_filtered*.json")}
    assert sorted(files) == ["train_filtered.json", "val_filtered.json", "val_filtered_backforth.json"]
    assert len(files["train_filtered.json"]) == 11
    assert {e["task"] for e in files["val_filtered.json"]} == {"move_object", "drop_object", "cover_object"}
    assert len(files["val_filtered.json"]) == 5
    assert [e["task"] for e in files["val_filtered_backforth.json"]] == ["back_and_forth"] * 2
    for name, entries in files.items():
        assert entries == res.entries[name]
        assert res.outputs[name] == ann_dir / name
        ids = [int(e["id"]) for e in entries]
        assert ids == sorted(ids)
        for e in entries:
            assert list(e) == ["id", "label", "template", "placeholders", "task"]
            assert e["template"] != TRAP and e["template"] != OTHER
    # raw UTF-8 survives the round trip
    assert "taschentücher" in (ann_dir / "train_filtered.json").read_text(encoding="utf-8")


def test_capitalised_template_maps_to_drop_and_substring_trap_does_not_map(tmp_path):
    write_dataset(tmp_path, [entry(1, ROCK), entry(2, FEATHER), entry(3, TRAP), entry(4, ONTO)], [])
    res = filter_annotations(tmp_path, FilterConfig())
    by_id = {e["id"]: e["task"] for e in res.entries["train_filtered.json"]}
    assert by_id == {"1": "drop_object", "2": "drop_object", "4": "cover_object"}


def test_task_map_is_case_insensitive_and_configurable(tmp_path):
    write_dataset(tmp_path, [entry(1, MOVE), entry(2, OTHER)], [])
    cfg = FilterConfig(task_map={"move_object": ("MOVING SOMETHING UP",), "drop_object": ("closing something",),
                                 "cover_object": (), "back_and_forth": ()})
    res = filter_annotations(tmp_path, cfg)
    assert {e["id"]: e["task"] for e in res.entries["train_filtered.json"]} == {"1": "move_object",
                                                                              "2": "drop_object"}


def test_task_map_key_not_in_labels_is_an_error(tmp_path):
    write_dataset(tmp_path, [entry(1, MOVE)], [])
    cfg = FilterConfig(task_map={"move_object": ("Moving something up", "Moving something sideways"),
                                 "drop_object": (), "cover_object": (), "back_and_forth": ()})
    with pytest.raises(AnnotationError, match="Moving something sideways"):
        filter_annotations(tmp_path, cfg)


def _big(n_per, start=1):
    tpls = [MOVE, PUSH, DROP, ROCK, COVER, ONTO, ROLL, THROW]
    return [entry(start + i, tpls[i % len(tpls)]) for i in range(n_per * len(tpls))]


def test_sampling_is_seeded_and_independent_of_file_order(tmp_path):
    train, val = _big(30), _big(10, start=100000)
    a = write_dataset(tmp_path / "a", train, val)
    shuffled_train, shuffled_val = train[:], val[:]
    random.Random(1).shuffle(shuffled_train)
    random.Random(2).shuffle(shuffled_val)
    b = write_dataset(tmp_path / "b", shuffled_train, shuffled_val, short=True)
    cfg = FilterConfig(train_per_task=20, val_per_task=5, seed=7)
    ra, ra2, rb = filter_annotations(a, cfg), filter_annotations(a, cfg), filter_annotations(b, cfg)
    assert ra.entries == ra2.entries == rb.entries
    for name in ra.outputs:
        assert (a / "annotations" / name).read_bytes() == (b / "annotations" / name).read_bytes()
    assert ra.counts["train"] == {"move_object": 20, "drop_object": 20, "cover_object": 20, "back_and_forth": 20}
    other = filter_annotations(a, FilterConfig(train_per_task=20, val_per_task=5, seed=8))
    assert other.entries["train_filtered.json"] != ra.entries["train_filtered.json"]
    assert len(other.entries["train_filtered.json"]) == 80


def test_task_with_fewer_keeps_all(tmp_path):
    train = _big(3)  # 6 entries per task
    write_dataset(tmp_path, train, [])
    res = filter_annotations(tmp_path, FilterConfig(train_per_task=2000))
    ids = sorted(int(e["id"]) for e in res.entries["train_filtered.json"])
    assert ids == sorted(int(e["id"]) for e in train)


@pytest.mark.parametrize("bad,needle", [
    ({"label": "x", "template": MOVE, "placeholders": ["x"]}, "missing field"),
    ({"id": "5", "template": MOVE, "placeholders": ["x"]}, "missing field"),
    ({"id": "5", "label": "x", "template": "Juggling [something] on fire", "placeholders": ["x"]},
     "not a class of the labels file"),
    ({"id": "abc", "label": "x", "template": MOVE, "placeholders": ["x"]}, "decimal digits"),
    ({"id": "../5", "label": "x", "template": MOVE, "placeholders": ["x"]}, "decimal digits"),
    ({"id": 5, "label": "x", "template": MOVE, "placeholders": ["x"]}, "must be a string"),
    ({"id": "5", "label": "x", "template": MOVE, "placeholders": "x"}, "list of strings"),
    (["5", MOVE], "expected a JSON object"),
    ({"id": "1001", "label": "x", "template": MOVE, "placeholders": ["x"]}, "more than once"),  # duplicate id
])
def test_bad_entry_raises_naming_file_and_entry(tmp_path, bad, needle):
    train = [entry(1000, MOVE), entry(1001, DROP), bad, entry(1002, COVER)]
    write_dataset(tmp_path, train, [])
    with pytest.raises(AnnotationError) as ei:
        filter_annotations(tmp_path, FilterConfig())
    msg = str(ei.value)
    assert "something-something-v2-train.json" in msg and "entry 2" in msg and needle in msg
    if isinstance(bad, dict) and "id" in bad:
        assert repr(bad["id"]) in msg


def test_skip_mode_counts_rejections_and_keeps_the_rest(tmp_path):
    train = [entry(1, MOVE), {"id": "2", "label": "x"}, entry(3, MOVE), entry(3, DROP), entry("x4", DROP),
             entry(5, "Juggling [something]"), entry(6, ROCK), entry(7, ROLL)]
    val = [entry(7, ROLL), entry(8, COVER)]  # id 7 is in both splits
    write_dataset(tmp_path, train, val)
    res = filter_annotations(tmp_path, FilterConfig(on_error="skip"))
    assert res.rejected == {"missing field": 1, "duplicate id": 1, "invalid id": 1,
                            "template not in labels": 1, "id also in validation": 1}
    assert "entry 1" in res.rejected_examples["missing field"][0]
    assert "entry 3 (id='3')" in res.rejected_examples["duplicate id"][0]
    assert sorted(e["id"] for e in res.entries["train_filtered.json"]) == ["1", "3", "6"]
    assert [e["id"] for e in res.entries["val_filtered_backforth.json"]] == ["7"]
    assert len(res.entries["val_filtered.json"]) == 1


def test_id_in_train_and_validation_raises(tmp_path):
    write_dataset(tmp_path, [entry(7, MOVE)], [entry(7, MOVE)])
    with pytest.raises(AnnotationError, match="also a validation id"):
        filter_annotations(tmp_path, FilterConfig())


@pytest.mark.parametrize("content,needle", [
    (b'[{"id": "1", ', "not valid JSON"),
    (b'{"id": "1"}', "expected a JSON array"),
    (b"\xff\xfe[]", "not UTF-8"),
])
def test_malformed_file_raises_even_in_skip_mode(tmp_path, content, needle):
    write_dataset(tmp_path, [entry(1, MOVE)], [])
    path = tmp_path / "annotations" / "something-something-v2-validation.json"
    path.write_bytes(content)
    for mode in ("raise", "skip"):
        with pytest.raises(AnnotationError, match=needle) as ei:
            filter_annotations(tmp_path, FilterConfig(on_error=mode))
        assert str(path) in str(ei.value)


def test_bad_labels_file(tmp_path):
    write_dataset(tmp_path, [entry(1, MOVE)], [], labels={"Moving something up": 3})
    with pytest.raises(AnnotationError, match="labels.json: label 'Moving something up' has index 3"):
        filter_annotations(tmp_path, FilterConfig())


@pytest.mark.parametrize("good", ["0", "7", "74225", "12345678901234567890"])
def test_validate_video_id_accepts(good):
    assert validate_video_id(good) == good


@pytest.mark.parametrize("bad", ["", " 12", "12 ", "../1", "1.webm", "１２", "٣", "-1", "+1", "1e3", "0x1",
                                 "007", "1/2", "12\n", "123456789012345678901", 12, None, b"12"])
def test_validate_video_id_refuses(bad):
    with pytest.raises(ValueError):
        validate_video_id(bad)


def test_find_annotation_files_names_what_is_missing(tmp_path):
    d = tmp_path / "annotations"
    d.mkdir()
    (d / "labels.json").write_text("{}")
    (d / "something-something-v2-train.json").write_text("[]")
    with pytest.raises(FileNotFoundError) as ei:
        find_annotation_files(d)
    assert "validation (something-something-v2-validation.json or validation.json)" in str(ei.value)
    assert "train" not in str(ei.value).split(":")[-1].replace("validation", "")
    (d / "validation.json").write_text("[]")
    files = find_annotation_files(d)
    assert files.labels.name == "labels.json" and files.test is None
    assert files.train.name == "something-something-v2-train.json"
    with pytest.raises(FileNotFoundError, match="test"):
        find_annotation_files(d, require_test=True)
    (d / "train.json").write_text("[ ]")
    with pytest.raises(AnnotationError, match="ambiguous train"):
        find_annotation_files(d)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_annotation_files(tmp_path / "nope")


def test_load_filtered_rejects_bad_entries(tmp_path):
    p = tmp_path / "val_filtered.json"
    good = {**entry(1, MOVE), "task": "move_object"}
    p.write_text(json.dumps([good]), encoding="utf-8")
    assert load_filtered(p) == [good]
    for bad, needle in [({k: v for k, v in good.items() if k != "task"}, "missing field"),
                        ({**good, "id": "../1"}, "decimal digits"),
                        ({**good, "task": 3}, "'task' must be a string")]:
        p.write_text(json.dumps([good, bad]), encoding="utf-8")
        with pytest.raises(AnnotationError, match=needle) as ei:
            load_filtered(p)
        assert "entry 1" in str(ei.value) and str(p) in str(ei.value)
    p.write_text(json.dumps([good, good]), encoding="utf-8")
    with pytest.raises(AnnotationError, match="duplicate id 1"):
        load_filtered(p)
    with pytest.raises(AnnotationError, match="does not exist"):
        load_filtered(tmp_path / "missing.json")


def test_filter_config_validation():
    with pytest.raises(ValueError, match="on_error"):
        FilterConfig(on_error="ignore")
    with pytest.raises(ValueError, match="not in the task map"):
        FilterConfig(basic_tasks=("move_object", "juggle"))
    with pytest.raises(ValueError, match="mapped to both"):
        FilterConfig(task_map={"move_object": ("Moving something up",), "drop_object": ("moving something up",),
                               "cover_object": (), "back_and_forth": ()})
