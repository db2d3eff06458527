"""Fixtures of the Dagster-level tests: a webserver over a copy of the smoke graph's instance."""

import pytest

from pecn_test_support import ui_server


@pytest.fixture(scope="module")
def ui(smoke_graph, tmp_path_factory, pytestconfig):
    """A running dagster-webserver (127.0.0.1, free port) serving the smoke graph."""
    return ui_server.shared_webserver(smoke_graph, tmp_path_factory, pytestconfig)
