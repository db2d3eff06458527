"""Run a command (`make ui`: `dagster dev`) with SIGINT and SIGTERM at their defaults.

    python -m pecn_assets.tools.ui .venv/bin/dagster dev -h 127.0.0.1 -p 3000

Started in the background, a command inherits SIGINT ignored, and `dagster dev` copies that
handler to SIGTERM, so neither Ctrl-C nor `kill` would stop it (docs/UI.md, "Stopping the UI").
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit("usage: python -m pecn_assets.tools.ui COMMAND [ARG...]")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
