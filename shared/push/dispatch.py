"""Handing a job's attempt to its pipeline (docs/pipelines.md), chosen by PIPELINE.

Every dispatch carries `{job_id, attempt, kind, params, project_id, callback_url}`; a dispatcher
returns once the pipeline has accepted it, or raises DispatchError (then `generate` refunds).

- `webhook`: signed POST (Standard Webhooks, PIPELINE_WEBHOOK_SECRET) to PIPELINE_URL.
- `prefect`: create a flow run of the kind's deployment with idempotency key "<job_id>:<attempt>",
  so dispatching the same attempt twice starts one run.
- `queue`: nothing to push; workers claim jobs with claim_jobs().
- `local`: the dev server's demo pipeline, handed in by the dev server (never deployed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from shared.push import webhooks

if TYPE_CHECKING:
    from shared.core.settings import Settings

# Pipelines should accept and queue work, not do it inside the request.
DISPATCH_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class DispatchError(Exception):
    """The pipeline did not accept the job (unreachable, timed out, or answered an error)."""


class Dispatcher(Protocol):
    def dispatch(self, job: dict[str, Any], callback_url: str | None) -> None: ...


def dispatch_payload(job: dict[str, Any], callback_url: str | None) -> dict[str, Any]:
    """What every pipeline receives, from a Job object."""
    return {
        "job_id": str(job["id"]),
        "attempt": job["attempt"],
        "kind": job["kind"],
        "params": job.get("params") or {},
        "project_id": str(job["project_id"]) if job.get("project_id") else None,
        "callback_url": callback_url,
    }


class WebhookDispatcher:
    def __init__(self, url: str, secrets: str, *, timeout: httpx.Timeout = DISPATCH_TIMEOUT):
        if not secrets:
            raise ValueError("PIPELINE=webhook needs PIPELINE_WEBHOOK_SECRET to sign dispatches")
        self.url = url
        self.secrets = secrets
        self.http = httpx.Client(timeout=timeout)

    def dispatch(self, job: dict[str, Any], callback_url: str | None) -> None:
        payload = dispatch_payload(job, callback_url)
        body = json.dumps(payload, separators=(",", ":"))
        # The message id is stable per attempt, so a pipeline can drop a repeated dispatch.
        headers = webhooks.sign(self.secrets, f"job_{payload['job_id']}_{payload['attempt']}", body)
        headers["Content-Type"] = "application/json"
        _post(self.http, self.url, content=body, headers=headers)

    def close(self) -> None:
        self.http.close()


class PrefectDispatcher:
    def __init__(
        self,
        api_url: str,
        deployments: dict[str, str],
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout = DISPATCH_TIMEOUT,
    ):
        self.api_url = api_url.rstrip("/")
        self.deployments = dict(deployments)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout, headers=headers)

    def dispatch(self, job: dict[str, Any], callback_url: str | None) -> None:
        deployment_id = self.deployments.get(job["kind"])
        if deployment_id is None:
            raise DispatchError(f"no Prefect deployment is configured for kind {job['kind']!r}")
        payload = dispatch_payload(job, callback_url)
        _post(
            self.http,
            f"{self.api_url}/deployments/{deployment_id}/create_flow_run",
            json={
                "parameters": payload,
                "idempotency_key": f"{payload['job_id']}:{payload['attempt']}",
            },
        )

    def close(self) -> None:
        self.http.close()


class QueueDispatcher:
    """Pull mode: jobs wait in the table until a worker claims them."""

    def dispatch(self, job: dict[str, Any], callback_url: str | None) -> None:
        return None


def dispatcher_from_settings(
    settings: Settings, local_pipeline: Callable[[Settings], Dispatcher] | None = None
) -> Dispatcher:
    """The dispatcher PIPELINE names; `local_pipeline` builds the dev server's demo pipeline."""
    if settings.pipeline == "webhook":
        return WebhookDispatcher(settings.pipeline_url, settings.pipeline_webhook_secret)
    if settings.pipeline == "prefect":
        return PrefectDispatcher(
            settings.prefect_api_url, settings.prefect_deployments, settings.prefect_api_key
        )
    if settings.pipeline == "local":
        if local_pipeline is None:
            raise ValueError(
                "PIPELINE=local is the dev server's demo pipeline (python -m shared.dev)"
            )
        return local_pipeline(settings)
    return QueueDispatcher()


def _post(http: httpx.Client, url: str, **kwargs: Any) -> None:
    try:
        response = http.post(url, **kwargs)
    except httpx.HTTPError as exc:
        raise DispatchError(f"{type(exc).__name__} calling the pipeline") from exc
    if not response.is_success:
        raise DispatchError(f"the pipeline answered HTTP {response.status_code}")
