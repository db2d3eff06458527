"""Tests that need an outside service (PostgreSQL, Chromium): skipped locally, failed in CI.

On a developer's machine a missing service skips its tests, with the reason and how to get it.
Under `CI=true` (what `.ci/run` exports and CI systems set) the same absence fails them: a CI run
whose PostgreSQL or browser tests skipped would pass without having run them.

    require_service("PostgreSQL", None)                       # there: returns
    require_service("Chromium", "/usr/bin/chromium missing")  # skips, or fails under CI=true
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import pytest

CI_VALUES = ("true", "1", "yes")


def in_ci(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether the tests run in CI: the environment variable CI is true, 1 or yes."""
    return (os.environ if environ is None else environ).get("CI", "").strip().lower() in CI_VALUES


def require_service(name: str, missing: Optional[str], *,
                    environ: Optional[Mapping[str, str]] = None) -> None:
    """Return when `missing` is None (the service is there); else skip the test with the reason,
    or fail it when running in CI (`in_ci`)."""
    if missing is None:
        return
    message = f"{name} is not available: {missing}"
    if in_ci(environ):
        pytest.fail(f"{message} (CI=true: a missing service fails the tests that need it)",
                    pytrace=False)
    pytest.skip(message)
