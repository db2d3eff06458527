"""Data versions of the raw annotations and videos (content hashes, stat-keyed memo)."""

from __future__ import annotations

import json
import os
import time

import pytest

from pecn_ml.data import versions
from pecn_ml.data.versions import annotations_version, videos_version


def write_annotations(d, short=False, train="[]"):
    d.mkdir(parents=True, exist_ok=True)
    name = (lambda r: f"{r}.json") if short else (lambda r: f"something-something-v2-{r}.json")
    (d / name("labels")).write_text('{"Moving something up": "0"}')
    (d / name("train")).write_text(train)
    (d / name("validation")).write_text("[]")
    (d / name("test")).write_text('[{"id": "1"}]')
    return d


def test_annotations_version_follows_content_not_names(tmp_path):
    a = write_annotations(tmp_path / "a" / "annotations")
    b = write_annotations(tmp_path / "b" / "annotations", short=True)
    va = annotations_version(a)
    assert len(va) == 64 and va == annotations_version(a) == annotations_version(b)
    (a / "something-something-v2-train.json").write_text('[{"id": "2"}]')
    assert annotations_version(a) != va
    (b / "test.json").unlink()
    assert annotations_version(b) != va  # test absent is part of the version
    with pytest.raises(FileNotFoundError, match="labels"):
        annotations_version(tmp_path)


def make_videos(vdir, n=5):
    vdir.mkdir(parents=True, exist_ok=True)
    old = time.time_ns() - 3_600 * 10**9
    for i in range(n):
        p = vdir / f"{i + 1}.webm"
        p.write_bytes(bytes([i]) * (100 + i))
        os.utime(p, ns=(old, old))  # older than the racy window
    return vdir


@pytest.fixture
def count_hashes(monkeypatch):
    calls = []
    real = versions.sha256_file

    def counting(path, *a, **k):
        calls.append(os.path.basename(path))
        return real(path, *a, **k)

    monkeypatch.setattr(versions, "sha256_file", counting)
    return calls


def test_videos_version_memo_avoids_rehashing(tmp_path, count_hashes):
    vdir = make_videos(tmp_path / "sthv2" / "videos")
    (vdir / "notes.txt").write_text("ignored")
    logs = []
    v1 = videos_version(vdir, log=logs.append)
    assert sorted(count_hashes) == ["1.webm", "2.webm", "3.webm", "4.webm", "5.webm"]
    memo = tmp_path / "sthv2" / ".pecn" / "videos_sha256_memo.json"
    assert set(json.loads(memo.read_text())["files"]) == {f"{i}.webm" for i in range(1, 6)}
    count_hashes.clear()
    assert videos_version(vdir, log=logs.append) == v1
    assert count_hashes == []
    assert "5 files, 0 hashed, 5 from memo" in logs[-1]


def test_videos_version_changes_with_content_additions_and_removals(tmp_path, count_hashes):
    vdir = make_videos(tmp_path / "videos")
    v1 = videos_version(vdir)
    p = vdir / "3.webm"
    p.write_bytes(b"\xff" * p.stat().st_size)  # same size, new content, new mtime
    count_hashes.clear()
    v2 = videos_version(vdir)
    assert v2 != v1 and count_hashes == ["3.webm"]
    (vdir / "9.webm").write_bytes(b"new")
    v3 = videos_version(vdir)
    assert v3 != v2
    (vdir / "9.webm").unlink()
    assert videos_version(vdir) == v2


def test_just_written_files_are_not_memoised(tmp_path, count_hashes):
    vdir = tmp_path / "videos"
    vdir.mkdir()
    (vdir / "1.webm").write_bytes(b"fresh")  # mtime = now: inside the racy window
    v = videos_version(vdir)
    count_hashes.clear()
    assert videos_version(vdir) == v and count_hashes == ["1.webm"]


def test_corrupt_memo_is_ignored(tmp_path):
    vdir = make_videos(tmp_path / "videos")
    v = videos_version(vdir)
    (tmp_path / ".pecn" / "videos_sha256_memo.json").write_text("{oops")
    assert videos_version(vdir) == v


def test_missing_video_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="video folder .*nope does not exist"):
        videos_version(tmp_path / "nope")
