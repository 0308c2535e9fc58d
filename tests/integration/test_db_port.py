"""The psycopg transport of the database port against a real database, outages included."""

from __future__ import annotations

import json
import logging
import uuid

import psycopg
import pytest
from psycopg import sql

from shared.core import db as db_module
from shared.core.db import Json, PostgresDatabase, close_pools
from shared.core.errors import ApiError
from tests.fake_http import closed_port_url, fake_server
from tests.integration.http_helpers import http_api
from tests.integration.sqlfns import add_kind


@pytest.fixture
def database(db_url):
    yield PostgresDatabase(db_url)
    close_pools()


def test_business_errors_come_out_by_sqlstate(database, conn, make_user):
    add_kind(conn, "story", cost=5)
    user = make_user(balance=1)
    with pytest.raises(ApiError) as caught:
        database.rpc("create_job", p_user_id=user, p_kind="story")
    assert (caught.value.code, caught.value.status) == ("insufficient_credits", 402)
    assert caught.value.message == "insufficient credits: balance 1, needs 5"


def test_unexpected_database_errors_are_internal_and_say_nothing(database, caplog):
    with pytest.raises(ApiError) as caught, caplog.at_level(logging.ERROR):
        database.rpc("no_such_function", p_x=1)
    assert (caught.value.code, caught.value.status) == ("internal_error", 500)
    assert "no_such_function" not in caught.value.message
    assert "no_such_function" in caplog.text


def test_dicts_are_jsonb_lists_are_arrays_and_json_wraps_the_rest(database, conn, make_user):
    add_kind(conn, "story", cost=1)
    user = make_user(balance=5)
    job = database.rpc("create_job", p_user_id=user, p_kind="story", p_params={"a": [1]})["job"]
    assert job["params"] == {"a": [1]}
    [claimed] = database.rpc("claim_jobs", p_worker_id="w", p_kinds=["story", "other"])["jobs"]
    done = database.rpc(
        "complete_job", p_job_id=uuid.UUID(claimed["id"]), p_attempt=1, p_result=Json("a story")
    )
    assert done["job"]["result"] == "a story"


def test_one_pool_per_url(db_url, database):
    assert db_module._pool_for(db_url) is db_module._pool_for(db_url)
    PostgresDatabase(db_url).rpc("reap_stalled_jobs")
    assert len([url for url in db_module._pools if url == db_url]) == 1


def test_transaction_pooler_port_turns_prepared_statements_off():
    assert db_module._is_transaction_pooler("postgresql://u:p@pooler.supabase.com:6543/postgres")
    assert db_module._is_transaction_pooler("host=pooler.supabase.com port=6543 dbname=postgres")
    assert not db_module._is_transaction_pooler("postgresql://u:p@db.supabase.co:5432/postgres")


def test_unreachable_database_is_unavailable(monkeypatch):
    monkeypatch.setattr(db_module, "POOL_TIMEOUT_SECONDS", 1.0)
    url = closed_port_url().replace("http://", "postgresql://postgres@").replace("/pipeline", "/x")
    try:
        with pytest.raises(ApiError) as caught:
            PostgresDatabase(url + "?connect_timeout=1").rpc("get_job")
    finally:
        close_pools()
    assert (caught.value.code, caught.value.status) == ("database_unavailable", 503)


def test_a_refund_that_cannot_be_made_is_answered_202_and_left_to_maintenance(
    monkeypatch, db_url, server_url, conn, make_user, caplog
):
    """Charge committed, pipeline down, then the database goes away before the refund."""
    add_kind(conn, "story", cost=5)
    user = make_user(balance=5)
    name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    monkeypatch.setattr(db_module, "POOL_TIMEOUT_SECONDS", 1.0)

    def database_outage_then_500(request):
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("alter database {} allow_connections false").format(sql.Identifier(name))
            )
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = %s and pid <> pg_backend_pid()",
                (name,),
            )
        return 500, {"error": "down"}

    with (
        fake_server(database_outage_then_500) as pipeline,
        http_api(monkeypatch, db_url, PIPELINE="webhook", PIPELINE_URL=pipeline.url) as api,
        caplog.at_level(logging.INFO, logger="credit_jobs.events"),
    ):
        response = api.post("generate", user=user, json_body={"kind": "story"})

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("alter database {} allow_connections true").format(sql.Identifier(name))
        )
    # Issue 9 finding 1: this was a 503 "failed and refunded" for a job left pending and paid.
    assert response.status_code == 202, response.json
    job = response.json["job"]
    assert job["status"] == "pending" and job["refunded"] == 0
    events = [
        json.loads(record.message)
        for record in caplog.records
        if record.name == "credit_jobs.events"
    ]
    [deferred] = [e for e in events if e["event"] == "refund_deferred"]
    assert deferred["severity"] == "ERROR" and deferred["outcome"] == "left to maintenance"
    assert deferred["job_id"] == job["id"]
    with psycopg.connect(db_url, autocommit=True) as check:
        status = check.execute("select status from public.jobs where id = %s", (job["id"],))
        assert status.fetchone()[0] == "pending"  # still charged: maintenance settles it
