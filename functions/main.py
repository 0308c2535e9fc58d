"""credit-jobs HTTP functions (docs/http-api.md): one functions-framework target per function.

Deploy each target on its own (`gcloud functions deploy generate --entry-point generate ...`) or
serve them all on one port (`python -m shared.dev`). Each handler: authenticate, parse, one stored
procedure, shape the JSON. Plumbing (CORS, limits, errors) lives in shared.api.http.
"""

from __future__ import annotations

import hmac
import logging
import sys
import uuid
from pathlib import Path

import flask
import functions_framework

# functions-framework loads this file by path; make the repository root importable for `shared`.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from shared.api.http import (  # noqa: E402
    MAX_CALLBACK_BYTES,
    endpoint,
    error_response,
    json_body,
    json_response,
)
from shared.api.models import (  # noqa: E402
    CancelRequest,
    CreditsQuery,
    GenerateRequest,
    HistoryQuery,
    PipelineCallback,
    ProjectCreate,
    ProjectsQuery,
    StatusQuery,
    StepsQuery,
    StepUpsert,
    idempotency_key,
)
from shared.api.services import allowed_origins, check_configuration, services  # noqa: E402
from shared.api.stripe_signature import verify_stripe_signature  # noqa: E402
from shared.core.db import Json  # noqa: E402
from shared.core.errors import (  # noqa: E402
    ApiError,
    configuration_error,
    pipeline_unavailable,
    unauthorized,
)
from shared.core.log import log_event  # noqa: E402
from shared.migrate import SCHEMA_VERSION  # noqa: E402
from shared.push.dispatch import DispatchError  # noqa: E402
from shared.push.maintenance import run_maintenance  # noqa: E402
from shared.push.webhooks import verify  # noqa: E402

# An incomplete configuration stops the function from starting, naming what is missing.
check_configuration()

# Prices change rarely, and a minute's delay is harmless: generate charges the current price.
KINDS_CACHE_CONTROL = "public, max-age=60"


def _user_id(request: flask.Request) -> uuid.UUID:
    return services().tokens.user_id(request.headers.get("Authorization"))


@functions_framework.http
@endpoint(methods=("POST",), allowed_origins=allowed_origins)
def generate(request: flask.Request):
    app = services()
    user_id = _user_id(request)
    body = GenerateRequest.model_validate(json_body(request))
    created = app.db.rpc(
        "create_job",
        p_user_id=user_id,
        p_kind=body.kind,
        p_params=body.params,
        p_project_id=body.project_id,
        p_step_number=body.step_number,
        p_idempotency_key=idempotency_key(request.headers.get("Idempotency-Key")),
        p_pipeline=app.settings.pipeline,
    )
    job, balance, pipeline = created["job"], created["balance"], created["pipeline"]
    if created["replayed"]:
        return {"job": job, "balance": balance, "replayed": True}, 200
    log_event(
        "job_created",
        job_id=job["id"],
        user_id=user_id,
        attempt=job["attempt"],
        kind=job["kind"],
        cost=job["cost"],
        outcome="charged",
    )
    if pipeline == "queue":
        return {"job": job, "balance": balance}, 201
    try:
        app.pipelines.dispatch(job, pipeline)
    except DispatchError as exc:
        log_event(
            "dispatch_failed",
            logging.WARNING,
            job_id=job["id"],
            user_id=user_id,
            attempt=job["attempt"],
            outcome="refused" if exc.refused else "uncertain",
            error=str(exc),
        )
        if exc.refused:
            return _refund_undispatched(job, balance, user_id, str(exc))
        # The pipeline may have it: refunding now could pay back a job that then runs. It stays
        # pending; maintenance dispatches the same attempt again, or refunds it at the deadline.
        return {"job": job, "balance": balance}, 202
    log_event(
        "job_dispatched",
        job_id=job["id"],
        user_id=user_id,
        attempt=job["attempt"],
        outcome=pipeline,
    )
    return {"job": job, "balance": balance}, 201


def _refund_undispatched(job: dict, balance: int, user_id: uuid.UUID, reason: str):
    """The pipeline refused the job: fail and refund it now, answer 503 with the refunded job.

    Only a committed refund is reported as one; if it cannot be made now, the answer is 202 with
    the pending job, and maintenance converges it (dispatch again, or refund at the deadline).
    """
    db = services().db
    try:
        refunded = db.rpc(
            "refund_job_atomic",
            p_job_id=job["id"],
            p_reason=f"pipeline unavailable: {reason}",
            p_attempt=job["attempt"],
        )
    except ApiError as exc:
        if exc.code in ("invalid_transition", "stale_attempt"):
            # the pipeline got the job after all (e.g. it answered late) and reported on it
            current = db.rpc("get_job", p_user_id=user_id, p_job_id=job["id"])["job"]
            return {"job": current, "balance": balance}, 201
        if exc.code != "database_unavailable":
            raise
        log_event(
            "refund_deferred",
            logging.ERROR,
            job_id=job["id"],
            user_id=user_id,
            attempt=job["attempt"],
            outcome="left to maintenance",
        )
        return {"job": job, "balance": balance}, 202
    log_event(
        "job_refunded",
        job_id=job["id"],
        user_id=user_id,
        attempt=job["attempt"],
        outcome=refunded["outcome"],
    )
    return error_response(
        pipeline_unavailable(f"{reason}; the job was failed and its credits refunded"),
        {"job": refunded["job"]},
    )


@functions_framework.http
@endpoint(
    methods=("GET", "POST"), max_body_bytes=MAX_CALLBACK_BYTES, allowed_origins=allowed_origins
)
def status(request: flask.Request):
    if request.method == "POST":
        return _pipeline_callback(request)
    user_id = _user_id(request)
    query = StatusQuery.model_validate(request.args.to_dict())
    return services().db.rpc("get_job", p_user_id=user_id, p_job_id=query.job_id)


def _pipeline_callback(request: flask.Request) -> dict:
    """A pipeline's signed report (docs/pipelines.md): fenced by attempt; replays are duplicates."""
    app = services()
    verify(
        app.settings.pipeline_webhook_secret, request.get_data(cache=True), dict(request.headers)
    )
    report = PipelineCallback.model_validate(json_body(request))
    try:
        applied = app.db.rpc(
            "apply_pipeline_report",
            p_job_id=report.job_id,
            p_attempt=report.attempt,
            p_status=report.status,
            p_progress=report.progress,
            p_result=None if report.result is None else Json(report.result),
            p_error=report.error,
            p_credits_used=report.credits_used,
            p_retryable=report.retryable,
        )
    except ApiError as exc:
        if exc.code in ("stale_attempt", "invalid_transition"):
            log_event(
                "report_rejected",
                logging.WARNING,
                job_id=report.job_id,
                attempt=report.attempt,
                status=report.status,
                outcome=exc.code,
            )
        raise
    job = applied["job"]
    log_event(
        "status_applied",
        job_id=job["id"],
        attempt=report.attempt,
        status=job["status"],
        report=report.status,
        outcome=applied["outcome"],
    )
    if applied["outcome"] == "refunded":
        log_event("job_refunded", job_id=job["id"], attempt=report.attempt, outcome="refunded")
    return applied


@functions_framework.http
@endpoint(methods=("GET",), allowed_origins=allowed_origins)
def history(request: flask.Request):
    user_id = _user_id(request)
    query = HistoryQuery.model_validate(request.args.to_dict())
    return services().db.rpc(
        "list_jobs",
        p_user_id=user_id,
        p_limit=query.limit,
        p_cursor=query.cursor,
        p_status=query.status,
    )


@functions_framework.http
@endpoint(methods=("GET", "POST"), allowed_origins=allowed_origins)
def projects(request: flask.Request):
    db = services().db
    user_id = _user_id(request)
    if request.method == "POST":
        body = ProjectCreate.model_validate(json_body(request))
        return db.rpc("create_project", p_user_id=user_id, p_title=body.title), 201
    query = ProjectsQuery.model_validate(request.args.to_dict())
    if query.project_id is not None:
        return db.rpc("get_project", p_user_id=user_id, p_project_id=query.project_id)
    return db.rpc("list_projects", p_user_id=user_id, p_limit=query.limit, p_cursor=query.cursor)


@functions_framework.http
@endpoint(methods=("GET", "POST"), allowed_origins=allowed_origins)
def steps(request: flask.Request):
    db = services().db
    user_id = _user_id(request)
    if request.method == "POST":
        body = StepUpsert.model_validate(json_body(request))
        saved = db.rpc(
            "upsert_project_step",
            p_user_id=user_id,
            p_project_id=body.project_id,
            p_step_number=body.step_number,
            p_data=body.data,
            p_completed_at=body.completed_at,
            p_skip_reason=body.skip_reason,
        )
        return saved, 201 if saved["created"] else 200
    query = StepsQuery.model_validate(request.args.to_dict())
    return db.rpc("list_project_steps", p_user_id=user_id, p_project_id=query.project_id)


@functions_framework.http
@endpoint(methods=("GET",), allowed_origins=allowed_origins)
def credits(request: flask.Request):
    user_id = _user_id(request)
    query = CreditsQuery.model_validate(request.args.to_dict())
    return services().db.rpc(
        "get_credits", p_user_id=user_id, p_limit=query.limit, p_cursor=query.cursor
    )


@functions_framework.http
@endpoint(methods=("POST",), allowed_origins=allowed_origins)
def cancel(request: flask.Request):
    user_id = _user_id(request)
    body = CancelRequest.model_validate(json_body(request))
    cancelled = services().db.rpc("cancel_job", p_job_id=body.job_id, p_user_id=user_id)
    job = cancelled["job"]
    log_event(
        "job_cancelled",
        job_id=job["id"],
        user_id=user_id,
        attempt=job["attempt"],
        outcome=cancelled["outcome"],
    )
    return {"job": job, "balance": cancelled["balance"]}


@functions_framework.http
@endpoint(methods=("POST",), allowed_origins=allowed_origins)
def maintenance(request: flask.Request):
    app = services()
    expected = app.settings.maintenance_token
    if not expected:
        raise configuration_error("MAINTENANCE_TOKEN is not set: maintenance is disabled")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise unauthorized("a valid maintenance token is required")
    return run_maintenance(app.db, app.pipelines, app.events)


@functions_framework.http
@endpoint(methods=("GET",), allowed_origins=allowed_origins)
def kinds(request: flask.Request):
    # No token: the price list is public, as job_kinds is to the Data API's anon role.
    price_list = services().db.rpc("list_job_kinds")
    return json_response(price_list, headers={"Cache-Control": KINDS_CACHE_CONTROL})


@functions_framework.http
@endpoint(methods=("GET",), allowed_origins=allowed_origins)
def health(request: flask.Request):
    """For load balancers and uptime checks, no token: 200 when the database answers and has
    applied SCHEMA_VERSION (the newest migration this code knows), else 503."""
    try:
        found = services().db.rpc("health_check", p_migration=SCHEMA_VERSION)
    except ApiError as exc:
        return _health(exc.code, "unknown", None, exc.message)
    if not found["migration_applied"]:
        problem = f"migration {SCHEMA_VERSION} is not applied: run the migrations"
        return _health("ok", "behind", found["latest_migration"], problem)
    return _health("ok", "ok", found["latest_migration"])


def _health(
    database: str, migrations: str, latest: str | None, problem: str | None = None
) -> flask.Response:
    body = {
        "status": "unavailable" if problem else "ok",
        "checks": {"database": database, "migrations": migrations},
        "expected_migration": SCHEMA_VERSION,
        "latest_migration": latest,
    }
    if problem:
        body["message"] = problem
    return json_response(body, 503 if problem else 200, {"Cache-Control": "no-store"})


@functions_framework.http
@endpoint(methods=("POST",), allowed_origins=allowed_origins)
def payments(request: flask.Request):
    """Stripe webhooks: verified here, applied once by apply_payment_event (docs/credits.md)."""
    app = services()
    verify_stripe_signature(
        app.settings.stripe_webhook_secret,
        request.get_data(cache=True),
        request.headers.get("Stripe-Signature"),
    )
    applied = app.db.rpc("apply_payment_event", p_event=json_body(request))
    log_event(
        "payment_event",
        logging.ERROR if applied["outcome"] == "held" else logging.INFO,
        event_id=applied["event_id"],
        type=applied["type"],
        outcome=applied["outcome"],
        detail=applied["detail"] or None,
    )
    return applied
