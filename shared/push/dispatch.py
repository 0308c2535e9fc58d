"""Handing a job's attempt to its pipeline (docs/pipelines.md): the kind's, or PIPELINE.

Every dispatch carries `{job_id, attempt, kind, params, project_id, callback_url}`; a dispatcher
returns once the pipeline has accepted it, or raises DispatchError saying whether the pipeline
certainly refused it (`generate` then refunds) or may have accepted it (a timeout: the job stays
pending; maintenance dispatches the same attempt again, or fails and refunds it at its deadline).

- `webhook`: signed POST (Standard Webhooks, PIPELINE_WEBHOOK_SECRET) to PIPELINE_URL.
- `prefect`: create a flow run of the kind's deployment with idempotency key "<job_id>:<attempt>",
  so dispatching the same attempt twice starts one run.
- `queue`: nothing to push; workers claim jobs with claim_jobs().
- `local`: the dev server's demo pipeline, handed in by the dev server (never deployed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from shared.push import webhooks

if TYPE_CHECKING:
    from shared.core.settings import Settings

# Pipelines should accept and queue work, not do it inside the request.
DISPATCH_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# Answers that come from a gateway or a timeout, not from the pipeline's decision: it may have
# accepted the job.
AMBIGUOUS_STATUSES = frozenset({408, 502, 504})
# Prefect answers 503 when its database is busy and 429 when rate limited, and asks clients to
# try again (its own client does); the idempotency key makes a repeat start no second run.
PREFECT_RETRY_STATUSES = frozenset({429, 503})
PREFECT_RETRY_DELAYS = (0.25, 0.5, 1.0)
# What each push pipeline needs before it can be used.
PIPELINE_REQUIREMENTS = {
    "webhook": "PIPELINE_URL, PIPELINE_WEBHOOK_SECRET and CALLBACK_URL",
    "prefect": "PREFECT_API_URL, PREFECT_DEPLOYMENTS and CALLBACK_URL",
    "local": "the dev server (python -m shared.dev) and CALLBACK_URL",
}


class DispatchError(Exception):
    """The pipeline did not take the job: `refused` if certainly not, else it may have."""

    def __init__(self, message: str, *, refused: bool = True) -> None:
        super().__init__(message)
        self.refused = refused


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
    def __init__(self, url: str, secrets: str, *, timeout: httpx.Timeout | None = None) -> None:
        self.url = url
        self.secrets = secrets
        self.http = httpx.Client(timeout=timeout or DISPATCH_TIMEOUT)

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
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.deployments = dict(deployments)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout or DISPATCH_TIMEOUT, headers=headers)

    def dispatch(self, job: dict[str, Any], callback_url: str | None) -> None:
        deployment_id = self.deployments.get(job["kind"])
        if deployment_id is None:
            raise DispatchError(f"no Prefect deployment is configured for kind {job['kind']!r}")
        payload = dispatch_payload(job, callback_url)
        _post(
            self.http,
            f"{self.api_url}/deployments/{deployment_id}/create_flow_run",
            retry_delays=PREFECT_RETRY_DELAYS,
            json={
                "parameters": payload,
                "idempotency_key": f"{payload['job_id']}:{payload['attempt']}",
            },
        )

    def close(self) -> None:
        self.http.close()


class Pipelines:
    """The push pipelines of one deployment by name, and PIPELINE as the default."""

    def __init__(
        self, default: str, dispatchers: dict[str, Dispatcher], callback_url: str | None
    ) -> None:
        self.default = default
        self.dispatchers = dispatchers
        self.callback_url = callback_url

    @classmethod
    def from_settings(
        cls, settings: Settings, local_pipeline: Callable[[Settings], Dispatcher] | None = None
    ) -> Pipelines:
        """Every pipeline the settings configure; `local_pipeline` is the dev server's."""
        dispatchers: dict[str, Dispatcher] = {}
        if settings.callback_url:
            if settings.pipeline_url and settings.pipeline_webhook_secret:
                dispatchers["webhook"] = WebhookDispatcher(
                    settings.pipeline_url, settings.pipeline_webhook_secret
                )
            if settings.prefect_api_url and settings.prefect_deployments:
                dispatchers["prefect"] = PrefectDispatcher(
                    settings.prefect_api_url, settings.prefect_deployments, settings.prefect_api_key
                )
            if local_pipeline is not None:
                dispatchers["local"] = local_pipeline(settings)
        return cls(settings.pipeline, dispatchers, settings.callback_url)

    def dispatch(self, job: dict[str, Any], pipeline: str | None = None) -> None:
        """Hand the job's attempt to `pipeline` (None: the default); nothing to do for queue."""
        name = pipeline or self.default
        if name == "queue":
            return
        dispatcher = self.dispatchers.get(name)
        if dispatcher is None:
            needs = PIPELINE_REQUIREMENTS.get(name, "a known pipeline name")
            raise DispatchError(f"the {name} pipeline is not configured here: it needs {needs}")
        dispatcher.dispatch(job, self.callback_url)

    def close(self) -> None:
        for dispatcher in self.dispatchers.values():
            close = getattr(dispatcher, "close", None)
            if close is not None:
                close()


def _post(
    http: httpx.Client, url: str, *, retry_delays: tuple[float, ...] = (), **kwargs: Any
) -> None:
    """POST; a PREFECT_RETRY_STATUSES answer is tried again after each of `retry_delays`."""
    delays = iter(retry_delays)
    while True:
        try:
            response = http.post(url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise DispatchError(f"{type(exc).__name__}: could not reach the pipeline") from exc
        except httpx.HTTPError as exc:
            # the request may have been delivered: only the pipeline knows whether it took the job
            raise DispatchError(
                f"{type(exc).__name__} calling the pipeline", refused=False
            ) from exc
        if response.is_success:
            return
        delay = next(delays, None) if response.status_code in PREFECT_RETRY_STATUSES else None
        if delay is None:
            raise DispatchError(
                f"the pipeline answered HTTP {response.status_code}",
                refused=response.status_code not in AMBIGUOUS_STATUSES,
            )
        time.sleep(delay)
