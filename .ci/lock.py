"""The install lock, `constraints.txt`: every package of the environment the tests pass in, pinned.

    python .ci/lock.py freeze   # print a new lock from this interpreter's environment (`make lock`)
    python .ci/lock.py check    # compare this environment with constraints.txt (`make lock-check`)

`make setup`, CI (through `make setup`) and deploy/Dockerfile install with `pip install -c
constraints.txt ...`. torch and its family are pinned without their build label (`torch==2.13.0`,
not `+cpu`): a pin without a local label matches every build of that version (PEP 440), so one
lock installs the CPU build or a CUDA one. Packages only a CUDA build brings (nvidia-*, triton)
are not in a lock made on a CPU machine; torch pins those itself. `check` fails on a package
whose version differs from the lock or that the lock does not name; packages of the lock that are
not installed (another platform's) are fine. Standard library only: it runs before anything is
installed.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"
PROJECT = "pecn"
INSTALLER = "pip"    # the tool itself; setuptools stays in (torch needs it at run time)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """"2.13.0+cpu" -> "2.13.0" (the local build label dropped)."""
    return version.split("+", 1)[0]


def installed() -> dict[str, tuple[str, str]]:
    """{canonical name: (name, version)} of this interpreter's environment, the project, pip and
    editable installs left out (`pip freeze --all --exclude-editable`)."""
    text = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                          capture_output=True, text=True).stdout
    out = {}
    for line in text.splitlines():
        m = _PIN.match(line.strip())
        if m and canonical(m.group(1)) not in (PROJECT, INSTALLER):
            out[canonical(m.group(1))] = (m.group(1), m.group(2))
    return out


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} of a lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def freeze() -> str:
    env = installed()
    torch = env.get("torch", ("torch", "not installed"))[1]
    header = [
        "# PECN's install lock (pip constraints): the environment the tests passed in, pinned.",
        f"# Made by `make lock` (.ci/lock.py freeze) on Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, torch {torch}.",
        "# Build labels are dropped (torch==X matches X+cpu and X+cu128 alike). Used by make setup, .ci/run",
        "# and deploy/Dockerfile; `make lock-check` compares an environment with it.",
    ]
    pins = [f"{name}=={public_version(version)}" for _, (name, version) in sorted(env.items())]
    return "\n".join(header + pins) + "\n"


def check(path: Path = LOCK) -> list[str]:
    """One line per difference between this environment and the lock (none: it matches)."""
    lock, env = read_lock(path), installed()
    problems = []
    for key, (name, version) in sorted(env.items()):
        if key not in lock:
            problems.append(f"{name}=={version} is installed but not in {path.name}")
        elif public_version(version) != public_version(lock[key]):
            problems.append(f"{name}=={version} is installed, {path.name} says {lock[key]}")
    return problems


def main(argv: list[str]) -> int:
    if argv == ["freeze"]:
        sys.stdout.write(freeze())
        return 0
    if argv == ["check"]:
        problems = check()
        for line in problems:
            print(line)
        print(f"lock-check: {'matches' if not problems else f'{len(problems)} difference(s) from'} {LOCK.name}")
        return 1 if problems else 0
    print(__doc__.strip().splitlines()[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
