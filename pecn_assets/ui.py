"""Run a command (the Makefile's `ui` target: `dagster dev`) with SIGINT and SIGTERM at their defaults.

    python -m pecn_assets.ui .venv/bin/dagster dev -h 127.0.0.1 -p 3000

A shell starts a background command (`make ui &` in a script, CI, `nohup`) with SIGINT ignored,
and an ignored signal stays ignored across exec. `dagster dev` then copies that SIGINT handler to
SIGTERM (dagster._utils.interrupts.setup_interrupt_handlers), so neither Ctrl-C nor `kill` stops
it. Reset to their defaults before the exec, both signals end it cleanly again: it shuts down the
webserver and the daemon it started (docs/UI.md, "Stopping the UI").
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit("usage: python -m pecn_assets.ui COMMAND [ARG...]")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
