"""Usage measurements (peak RSS, seconds per step, bytes on disk)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pecn_ml.utils.usage import bytes_on_disk, cuda_peak_memory_bytes, log_tail, peak_rss, run_logged, usage_metadata


def test_peak_rss_of_this_process_and_of_a_finished_child():
    before = peak_rss()
    assert before.self_bytes > 10 * 2**20  # a Python with torch imported is well above 10 MiB
    subprocess.run([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                   check=True)
    after = peak_rss()
    assert after.children_bytes >= 250 * 2**20 and after.max_bytes >= after.self_bytes
    meta = usage_metadata()
    assert meta["peak_rss_bytes"] >= before.self_bytes
    assert ("cuda_peak_bytes" in meta) == (cuda_peak_memory_bytes() is not None)


def test_bytes_on_disk_counts_files_once_and_never_follows_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 1000)
    (tmp_path / "y.bin").write_bytes(b"2" * 234)
    os.link(tmp_path / "y.bin", tmp_path / "a" / "y-hardlink.bin")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"3" * 10_000)
    os.symlink(outside, tmp_path / "link.bin")
    assert bytes_on_disk(tmp_path / "y.bin") == 234
    assert bytes_on_disk(tmp_path) == 1000 + 234 + len(os.readlink(tmp_path / "link.bin"))
    with pytest.raises(FileNotFoundError):
        bytes_on_disk(tmp_path / "missing")


def test_run_logged_reports_exit_code_seconds_and_peak_rss(tmp_path):
    log = tmp_path / "child.log"
    code, seconds, rss = run_logged([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * "
                                     "len(b[::4096]); print('first'); print('last'); raise SystemExit(3)"], log)
    assert code == 3 and seconds > 0 and rss >= 250 * 2**20
    assert log_tail(log, 1) == "last" and log_tail(log) == "first\nlast"
    assert log_tail(tmp_path / "missing.log") == ""
