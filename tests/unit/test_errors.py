"""The one table from SQLSTATE to API error, and the shape of error bodies."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from shared.core import errors
from shared.core.errors import SQLSTATE_ERRORS
from shared.migrate import DEFAULT_DIR as MIGRATIONS

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"


@pytest.mark.parametrize(
    ("sqlstate", "code", "status"), [(s, *e) for s, e in SQLSTATE_ERRORS.items()]
)
def test_business_sqlstates_map_to_their_codes_with_our_message(sqlstate, code, status):
    error = errors.from_sqlstate(sqlstate, "our message")
    assert (error.code, error.status, error.message) == (code, status, "our message")
    assert error.body() == {"error": {"code": code, "message": "our message"}}


def test_the_table_holds_exactly_the_sqlstates_the_migrations_raise():
    """A CJ code raised in SQL but missing here would reach clients as internal_error."""
    raised = {
        code
        for migration in MIGRATIONS.glob("*.sql")
        for code in re.findall(r"'(CJ[0-9A-Z]{3})'", migration.read_text())
    }
    assert raised == set(SQLSTATE_ERRORS)


def test_openapi_documents_every_business_error_code():
    error = yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]["Error"]
    documented = error["properties"]["error"]["properties"]["code"]["enum"]
    assert {code for code, _status in SQLSTATE_ERRORS.values()} <= set(documented)


@pytest.mark.parametrize("sqlstate", ["42883", "23505", None, "CJ999"])
def test_anything_else_is_a_logged_internal_error_without_sql_text(sqlstate, caplog):
    with caplog.at_level(logging.ERROR, logger="credit_jobs.errors"):
        error = errors.from_sqlstate(sqlstate, "function public.secret_fn() does not exist")
    assert (error.code, error.status) == ("internal_error", 500)
    assert "secret_fn" not in error.message
    assert "secret_fn" in caplog.text


def test_non_database_errors():
    assert (errors.unauthorized().code, errors.unauthorized().status) == ("unauthorized", 401)
    assert errors.invalid_request("x").status == 400
    assert errors.payload_too_large(10).status == 413
    assert errors.method_not_allowed("PUT").status == 405
    assert errors.pipeline_unavailable().status == 503
    assert errors.invalid_signature().status == 401
    assert (errors.database_unavailable().code, errors.database_unavailable().status) == (
        "database_unavailable",
        503,
    )
