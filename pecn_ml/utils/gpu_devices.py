"""Which GPUs a step may use: exclusive device claims (one `flock`ed file per device) that die
with their holder, so a killed step leaves nothing stale; `pool_slots` sizes the `gpu` pool."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from pecn_ml.utils.files import try_flock
from pecn_ml.utils.progress import LogFn

CUDA_ENV = "CUDA_VISIBLE_DEVICES"
LOCK_PREFIX = "gpu-"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")  # an index, or a GPU/MIG UUID (CUDA_VISIBLE_DEVICES)
_DEVICE_INDEX = re.compile(r"^[0-9]+$")          # the configured device set: device indices only


def parse_devices(text: str, what: str = CUDA_ENV, pattern: re.Pattern = _DEVICE_ID) -> list[str]:
    """"0,1, 3" -> ["0", "1", "3"]; empty -> []; ValueError on repeats and ids `pattern` refuses."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in devices if not pattern.match(d)]
    if bad:
        raise ValueError(f"{what}={text!r}: invalid device id(s) {bad}; expected a comma list of "
                         f"device indices such as '0,1,2,3' (empty: none)")
    if len(set(devices)) != len(devices):
        raise ValueError(f"{what}: a device is listed twice in {text!r}")
    return devices


def parse_device_indices(text: str, what: str = "gpu_devices") -> list[str]:
    """A configured device set: "0,1,3" -> ["0", "1", "3"], "" -> []; anything but non-negative
    integers ("a,b", "-1", "0,,1") raises ValueError naming `what` and the value."""
    if text.strip() and any(not d.strip() for d in text.split(",")):
        raise ValueError(f"{what}={text!r}: an empty entry; expected a comma list of device "
                         f"indices such as '0,1,2,3' (empty: none)")
    return parse_devices(text, what, _DEVICE_INDEX)


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_set(configured: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
               cuda_count: Optional[Callable[[], int]] = None) -> list[str]:
    """The devices this machine offers to GPU steps: `configured` (device indices; "" none) when
    given, else the devices CUDA shows this process (the entries of CUDA_VISIBLE_DEVICES when set,
    so a child gets the same physical ids, else 0..count-1); none without CUDA."""
    if configured is not None:
        return parse_device_indices(configured)
    env = os.environ if environ is None else environ
    count = (cuda_count or _cuda_device_count)()
    if count <= 0:
        return []
    if env.get(CUDA_ENV, "").strip():
        return parse_devices(env[CUDA_ENV], CUDA_ENV)[:count]
    return [str(i) for i in range(count)]


def pool_slots(devices: int | Sequence[int], processes_per_step: int = 1) -> int:
    """GPU steps that can run at once: `devices` // `processes_per_step`, at least 1; `devices` may
    be a count per machine (Kubernetes nodes), since a step's processes share one machine."""
    if processes_per_step < 1:
        raise ValueError(f"pool_slots: processes_per_step must be >= 1, got {processes_per_step}")
    counts = [devices] if isinstance(devices, int) else list(devices)
    if any(c < 0 for c in counts):
        raise ValueError(f"pool_slots: negative device count in {devices}")
    return max(1, sum(c // processes_per_step for c in counts))


@dataclass
class DeviceClaim:
    """Devices held by one claimant until its `claim_devices` block ends (or it dies)."""

    devices: tuple[str, ...]
    waited_s: float = 0.0
    fds: tuple[int, ...] = field(default=(), repr=False)
    holder: Mapping[str, object] = field(default_factory=dict, repr=False)

    @property
    def cuda_visible_devices(self) -> Optional[str]:
        """The child's `CUDA_VISIBLE_DEVICES` ("2,3"); None when nothing was claimed."""
        return ",".join(self.devices) if self.devices else None

    def env(self) -> dict[str, str]:
        """Environment for the child: {"CUDA_VISIBLE_DEVICES": ...}, or {} without a claim."""
        return {CUDA_ENV: self.cuda_visible_devices} if self.devices else {}

    def metadata(self) -> dict:
        """What a step records: `gpu_devices` (list) and how long it waited for them."""
        return {"gpu_devices": list(self.devices), "gpu_wait_s": round(self.waited_s, 3)}

    def hand_to(self, pid: int) -> None:
        """Name process `pid` (a child given `fds`) as the holder in the lock files, the claimant as
        `claimed_by_pid`; `hand_to(os.getpid())` names the claimant again."""
        record = dict(self.holder) if pid == os.getpid() else {**self.holder, "pid": pid,
                                                                 "claimed_by_pid": os.getpid()}
        for fd in self.fds:
            _write_holder(fd, record)


def lock_path(lock_dir: str | os.PathLike, device: str) -> Path:
    return Path(lock_dir) / f"{LOCK_PREFIX}{device}.lock"


def _write_holder(fd: int, holder: Mapping[str, object]) -> None:
    """Who holds the device, for people reading the lock file (the lock itself is the flock)."""
    data = json.dumps(holder, sort_keys=True).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data + b"\n", 0)


def _release(fds: Sequence[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor of the open file drops the flock


def read_holders(lock_dir: str | os.PathLike, devices: Sequence[str]) -> dict[str, dict]:
    """{device: holder info} of the lock files that name one (may be stale: only the flock counts)."""
    out = {}
    for d in devices:
        try:  # an empty file (no holder) is not JSON
            out[d] = json.loads(lock_path(lock_dir, d).read_text())
        except (OSError, ValueError):
            continue
    return {d: h for d, h in out.items() if h}


def free_devices(lock_dir: str | os.PathLike, devices: Optional[Sequence[str]] = None) -> list[str]:
    """The devices nobody holds right now (probes each lock and lets go at once)."""
    devices = device_set() if devices is None else list(devices)
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    free = []
    for d in devices:
        fd = try_flock(lock_path(lock_dir, d))
        if fd is not None:
            os.close(fd)
            free.append(d)
    return free


def _try_claim(lock_dir: Path, devices: Sequence[str], n: int, holder: Mapping[str, object]
               ) -> Optional[tuple[list[str], list[int]]]:
    """n free devices, lowest first, all or nothing (so two claimants never hold half a claim each)."""
    got, fds = [], []
    for d in devices:
        fd = try_flock(lock_path(lock_dir, d))
        if fd is None:
            continue
        got.append(d)
        fds.append(fd)
        if len(got) == n:
            for fd_ in fds:
                _write_holder(fd_, {**holder, "devices": got})
            return got, fds
    _release(fds)
    return None


@contextmanager
def claim_devices(n: int, lock_dir: str | os.PathLike, timeout_s: Optional[float] = None,
                  log: Optional[LogFn] = None, *, devices: Optional[Sequence[str]] = None,
                  poll_s: float = 1.0, log_every_s: float = 60.0, set_env: bool = False,
                  holder: Optional[Mapping[str, object]] = None) -> Iterator[DeviceClaim]:
    """Hold `n` devices of `devices` (default `device_set()`) exclusively for the block.

    Waits (logging who holds them) while fewer than `n` are free; TimeoutError after `timeout_s`.
    No devices or `n == 0`: an empty claim (the caller decides whether the CPU will do). `n` above
    the device set: ValueError at once. `set_env`: CUDA_VISIBLE_DEVICES set for the block.
    `holder` (e.g. run id and step) is written into the lock files."""
    devices = device_set() if devices is None else list(devices)
    if n < 0:
        raise ValueError(f"claim_devices: n must be >= 0, got {n}")
    if n == 0 or not devices:
        yield DeviceClaim(devices=())
        return
    if n > len(devices):
        raise ValueError(f"claim_devices: {n} device(s) asked for, but this machine offers "
                         f"{len(devices)} (gpu_devices={','.join(devices)})")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), **(holder or {})}
    t0 = time.monotonic()
    last_log = -float("inf")
    while (got := _try_claim(lock_dir, devices, n, info)) is None:
        waited = time.monotonic() - t0
        if timeout_s is not None and waited >= timeout_s:
            raise TimeoutError(f"claim_devices: no {n} free device(s) of {devices} after "
                               f"{waited:.0f}s; held by {read_holders(lock_dir, devices)}")
        if log is not None and time.monotonic() - last_log >= log_every_s:
            last_log = time.monotonic()
            log(f"waiting for {n} free GPU device(s) of {','.join(devices)} "
                f"(waited {waited:.0f}s; held by {read_holders(lock_dir, devices)})")
        time.sleep(poll_s if timeout_s is None else max(0.0, min(poll_s, timeout_s - waited)))
    claimed, fds = got
    claim = DeviceClaim(devices=tuple(claimed), waited_s=time.monotonic() - t0, fds=tuple(fds),
                        holder={**info, "devices": claimed})
    if log is not None:
        log(f"claimed GPU device(s) {claim.cuda_visible_devices} after {claim.waited_s:.1f}s")
    old = os.environ.get(CUDA_ENV)
    try:
        if set_env:
            os.environ[CUDA_ENV] = claim.cuda_visible_devices or ""
        yield claim
    finally:
        if set_env:
            if old is None:
                os.environ.pop(CUDA_ENV, None)
            else:
                os.environ[CUDA_ENV] = old
        _release(fds)
