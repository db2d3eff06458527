"""Helpers shared by tests (importable: tests/ is on sys.path, see tests/conftest.py)."""
