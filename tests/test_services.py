"""The skip-or-fail decision for tests that need an outside service (pecn_test_support/services.py)."""

import pytest

from pecn_test_support.services import in_ci, require_service


@pytest.mark.parametrize("value,ci", [("true", True), ("TRUE", True), ("1", True), ("yes", True),
                                      ("", False), ("false", False), ("0", False), (None, False)])
def test_in_ci_reads_the_ci_variable(value, ci):
    assert in_ci({} if value is None else {"CI": value}) is ci


def test_a_present_service_neither_skips_nor_fails():
    assert require_service("PostgreSQL", None, environ={"CI": "true"}) is None
    assert require_service("PostgreSQL", None, environ={}) is None


def test_a_missing_service_skips_locally_with_the_reason():
    with pytest.raises(pytest.skip.Exception, match="Chromium is not available: /usr/bin/chromium missing"):
        require_service("Chromium", "/usr/bin/chromium missing", environ={"CI": "false"})


def test_a_missing_service_fails_in_ci():
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is not available: no server.*CI=true"):
        require_service("PostgreSQL", "no server at 127.0.0.1:5432", environ={"CI": "true"})
