"""Processes of this machine: who is alive (pid + start time, so a reused pid is not taken for a
process that is gone), and `die_with`: a training child that stops when the process that launched
it is gone (parent-death signal plus a watchdog; SIGINT first, so checkpoints stay resumable)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 70  # os._exit code of a child whose parent died and that did not stop in time


def host_tag() -> str:
    """A short tag of this machine (names temp folders by their writer's machine)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/{pid}/stat after "pid (comm) " (state first); [] where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2:].split()


def start_ticks(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, Linux); "" where unknown."""
    fields = _stat(pid)
    return fields[19] if fields else ""  # field 22 of the whole line


def started_at(pid: int) -> Optional[float]:
    """When process `pid` started (Unix time, Linux); None where unknown."""
    ticks = start_ticks(pid)
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + int(ticks) / os.sysconf("SC_CLK_TCK") if ticks else None


def process_alive(pid: int, start: str = "") -> bool:
    """Whether process `pid` of this machine runs (a zombie does not), and, with `start` (its
    `start_ticks`), is the one that started then, not a later process given the same pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # a zombie
        return False
    now = fields[19] if fields else ""
    return not (start and now and now != start)


def heed_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt again where a background shell (`cmd &`, nohup, CI) left
    it ignored, which would make the death signal do nothing; main thread only."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def set_parent_death_signal(sig: int = signal.SIGINT) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    if sig == signal.SIGINT:
        heed_sigint()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with(pid: int, start: str = "", *, poll_s: float = 1.0, grace_s: float = 15.0,
             log: Optional[Callable[[str], None]] = None) -> threading.Thread:
    """Stop this process (SIGINT, then `os._exit` after `grace_s`) when process `pid` (started at
    `start`) or the direct parent is gone; returns the watchdog thread."""
    parent = os.getppid()
    heed_sigint()
    set_parent_death_signal(signal.SIGINT)

    def gone() -> Optional[str]:
        if not process_alive(pid, start):
            return f"process {pid} that launched this one is gone"
        if os.getppid() != parent:  # re-parented: the direct parent (e.g. torchrun) died
            return f"parent process {parent} is gone"
        return None

    def watch() -> None:
        while (why := gone()) is None:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGINT)
        try:  # best effort: the dead parent may have held the read end of our stderr (BrokenPipeError)
            if log is not None:
                log(f"{why}: stopping (pid {os.getpid()})")
        except Exception:
            pass
        time.sleep(grace_s)
        os._exit(EXIT_PARENT_GONE)

    thread = threading.Thread(target=watch, name="die-with-parent", daemon=True)
    thread.start()
    return thread
