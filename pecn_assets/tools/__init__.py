"""Command-line tools: demo, rehearse, cleanup, ui, results (each `python -m pecn_assets.tools.NAME`)."""
