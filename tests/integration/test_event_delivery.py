"""Delivering the outbox (guarantee 12, docs/events.md#delivery) to a real HTTP receiver on
127.0.0.1: signed Standard Webhooks checked with the `standardwebhooks` library, one webhook-id
per event across retries, exponential backoff, giving up after MAX_ATTEMPTS into
`undelivered_events`, the runbook's replay, and no money lock held while a POST is in flight."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook
from werkzeug.serving import make_server

from shared.core.db import PostgresDatabase, close_pools
from shared.push import events as outbox
from shared.push.dispatch import Pipelines
from shared.push.events import EventSender, deliver_events
from shared.push.maintenance import run_maintenance
from tests.fake_http import Recorded, closed_port_url, fake_server
from tests.integration.http_helpers import MAINTENANCE_TOKEN, http_api
from tests.integration.sqlfns import add_kind, call, connect, create_job
from tests.integration.test_admin_runbook import run_file

README = Path(__file__).resolve().parents[2] / "README.md"
SECRET = "whsec_" + base64.b64encode(b"test-only events secret, 32 byte").decode()


class Receiver:
    """Answers with the next status of `statuses` (the last one repeats); checks every
    signature with the standardwebhooks library before answering."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses or [204])
        self.verified: list[dict] = []

    def __call__(self, request: Recorded) -> tuple[int, dict]:
        body = Webhook(SECRET).verify(request.body, request.headers)
        self.verified.append({"id": request.headers["webhook-id"], "body": body})
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return status, {"received": status < 300}

    def ids(self) -> list[str]:
        return [delivery["id"] for delivery in self.verified]


@pytest.fixture
def db(db_url: str) -> Iterator[PostgresDatabase]:
    yield PostgresDatabase(db_url)
    close_pools()


@pytest.fixture
def no_pipelines() -> Pipelines:
    return Pipelines("queue", {}, None)


@pytest.fixture
def story(conn) -> str:
    return add_kind(conn, "story", 10)


def row(conn, event_id) -> dict:
    return conn.execute("select * from public.credit_events where id = %s", (event_id,)).fetchone()


def make_due(conn) -> None:
    """As if every retry's backoff (or every claim's lease) had passed."""
    conn.execute(
        "update public.credit_events set next_attempt_at = now() where next_attempt_at is not null"
    )


def seconds_until_due(conn, event_id) -> float:
    return conn.execute(
        "select extract(epoch from next_attempt_at - now()) as s from public.credit_events"
        " where id = %s",
        (event_id,),
    ).fetchone()["s"]


def only_event(conn) -> dict:
    [event] = conn.execute("select * from public.credit_events").fetchall()
    return event


def test_maintenance_delivers_every_event_signed_with_its_id(conn, db, no_pipelines, make_user):
    add_kind(conn, "story", 10)
    user = make_user(25)
    job = create_job(conn, user, "story")
    call(conn, "cancel_job", job_id=job["id"], user_id=user)
    stored = conn.execute("select * from public.credit_events order by seq").fetchall()
    receiver = Receiver(200)

    with fake_server(receiver) as server:
        sender = EventSender(server.url + "/events", SECRET)
        summary = run_maintenance(db, no_pipelines, sender)
        again = run_maintenance(db, no_pipelines, sender)
        sender.close()

    assert (summary["events_delivered"], summary["events_failed"]) == (2, 0)
    assert (again["events_delivered"], again["events_failed"]) == (0, 0)
    assert receiver.ids() == [str(e["id"]) for e in stored]
    granted, cancelled = (delivery["body"] for delivery in receiver.verified)
    assert granted["type"] == "credits.granted" and cancelled["type"] == "job.cancelled"
    assert granted["id"] == str(stored[0]["id"])
    assert cancelled["data"]["user_id"] == str(user)
    assert cancelled["data"]["job"]["id"] == job["id"] and cancelled["data"]["refunded"] == 10
    assert dt.datetime.fromisoformat(cancelled["timestamp"]) == stored[1]["created_at"]
    assert server.requests[0].path == "/events"
    assert server.requests[0].headers["content-type"] == "application/json"
    for event in stored:
        delivered = row(conn, event["id"])
        assert delivered["attempts"] == 1 and delivered["delivered_at"] is not None
        assert delivered["next_attempt_at"] is None and delivered["last_error"] is None


def test_a_failing_receiver_is_retried_with_backoff_under_one_webhook_id(conn, db, make_user):
    make_user(25)
    event = only_event(conn)
    receiver = Receiver(503, 500, 200)

    with fake_server(receiver) as server:
        sender = EventSender(server.url, SECRET)
        assert deliver_events(db, sender) == {"delivered": 0, "failed": 1}
        failed = row(conn, event["id"])
        assert failed["attempts"] == 1 and "HTTP 503" in failed["last_error"]
        assert 55 < seconds_until_due(conn, event["id"]) <= outbox.RETRY_BASE_SECONDS
        assert deliver_events(db, sender) == {"delivered": 0, "failed": 0}  # not due yet
        make_due(conn)
        assert deliver_events(db, sender) == {"delivered": 0, "failed": 1}
        assert 115 < seconds_until_due(conn, event["id"]) <= 2 * outbox.RETRY_BASE_SECONDS
        make_due(conn)
        assert deliver_events(db, sender) == {"delivered": 1, "failed": 0}
        sender.close()

    assert receiver.ids() == [str(event["id"])] * 3
    delivered = row(conn, event["id"])
    assert delivered["attempts"] == 3 and delivered["delivered_at"] is not None


def test_after_max_attempts_an_event_waits_for_the_runbooks_replay(conn, db, make_user):
    user = make_user(25)
    event = only_event(conn)
    receiver = Receiver(500)

    with fake_server(receiver) as server:
        sender = EventSender(server.url, SECRET)
        for _ in range(outbox.MAX_ATTEMPTS):
            assert deliver_events(db, sender)["failed"] == 1
            make_due(conn)
        assert deliver_events(db, sender) == {"delivered": 0, "failed": 0}  # gave up
        [waiting] = conn.execute("select * from public.undelivered_events").fetchall()
        assert (waiting["id"], waiting["user_id"], waiting["type"]) == (
            event["id"],
            user,
            "credits.granted",
        )
        assert (waiting["state"], waiting["attempts"]) == ("gave_up", outbox.MAX_ATTEMPTS)
        assert "HTTP 500" in waiting["last_error"]

        listed, [replayed] = run_file(conn, "replay_events.sql", None)
        assert [(r["id"], r["state"]) for r in listed] == [(event["id"], "gave_up")]
        assert replayed["replay_events"] == {"replayed": 1}
        receiver.statuses = [200]
        assert deliver_events(db, sender) == {"delivered": 1, "failed": 0}
        sender.close()

    assert set(receiver.ids()) == {str(event["id"])}
    assert len(receiver.ids()) == outbox.MAX_ATTEMPTS + 1
    assert conn.execute("select * from public.undelivered_events").fetchall() == []


def test_undelivered_events_shows_retrying_events_too(conn, db, make_user):
    make_user(25)
    with fake_server(Receiver(502)) as server:
        sender = EventSender(server.url, SECRET)
        deliver_events(db, sender)
        sender.close()
    [waiting] = conn.execute("select state, attempts from public.undelivered_events").fetchall()
    assert waiting == {"state": "retrying", "attempts": 1}


def test_replaying_a_delivered_event_sends_it_again_under_its_id(conn, db, make_user):
    make_user(25)
    event = only_event(conn)
    receiver = Receiver(200)
    with fake_server(receiver) as server:
        sender = EventSender(server.url, SECRET)
        deliver_events(db, sender)
        assert call(conn, "replay_events", event_ids=[event["id"]]) == {"replayed": 1}
        assert deliver_events(db, sender) == {"delivered": 1, "failed": 0}
        sender.close()
    assert receiver.ids() == [str(event["id"])] * 2


def test_an_unreachable_receiver_ends_the_run_after_one_attempt(conn, db, make_user):
    for _ in range(3):
        make_user(25)
    sender = EventSender(closed_port_url(), SECRET)

    assert deliver_events(db, sender) == {"delivered": 0, "failed": 1}
    sender.close()

    rows = conn.execute("select attempts, last_error from public.credit_events order by seq")
    tried, *untried = rows.fetchall()
    assert tried["attempts"] == 1 and "ConnectError" in tried["last_error"]
    assert [r["attempts"] for r in untried] == [0, 0]
    # claimed but not sent: due again when the claim's lease ends
    for event in conn.execute("select id from public.credit_events where attempts = 0").fetchall():
        assert 55 < seconds_until_due(conn, event["id"]) <= outbox.CLAIM_LEASE_SECONDS


def test_concurrent_runs_deliver_each_event_once(conn, db_url, make_user):
    for _ in range(120):
        make_user(25)
    receiver = Receiver(200)
    results: list[dict] = []

    def run() -> None:
        sender = EventSender(server.url, SECRET)
        results.append(deliver_events(PostgresDatabase(db_url), sender, batch=10))
        sender.close()

    with fake_server(receiver) as server:
        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    close_pools()

    assert sum(r["delivered"] for r in results) == 120
    assert Counter(Counter(receiver.ids()).values()) == {1: 120}


def test_a_post_in_flight_holds_no_money_lock(conn, db, db_url, story, make_user):
    """While the receiver sits on an event of this user, their money functions run at once."""
    user = make_user(25)
    release, arrived = threading.Event(), threading.Event()

    def slow(request: Recorded) -> tuple[int, dict]:
        arrived.set()
        release.wait(timeout=30)
        return 200, {}

    with fake_server(slow) as server:
        sender = EventSender(server.url, SECRET)
        delivery = threading.Thread(target=deliver_events, args=(db, sender))
        delivery.start()
        assert arrived.wait(timeout=10)
        with connect(db_url) as other:
            other.execute("set lock_timeout = '1s'")
            job = create_job(other, user, "story")
            call(other, "cancel_job", job_id=job["id"], user_id=user)
            call(other, "admin_grant_credits", user_id=user, amount=5, reason="meanwhile")
            call(other, "set_low_balance_threshold", user_id=user, threshold=3)
        release.set()
        delivery.join(timeout=30)
        sender.close()
    assert (
        conn.execute(
            "select count(*) as n from public.credit_events where delivered_at is not null"
        ).fetchone()["n"]
        >= 1
    )


def test_the_maintenance_function_delivers_to_events_url(monkeypatch, db_url, conn, make_user):
    make_user(25)
    receiver = Receiver(200)
    with (
        fake_server(receiver) as server,
        http_api(monkeypatch, db_url, EVENTS_URL=server.url, EVENTS_WEBHOOK_SECRET=SECRET) as api,
    ):
        response = api.post("maintenance", headers={"Authorization": f"Bearer {MAINTENANCE_TOKEN}"})
    assert response.status_code == 200
    assert (response.json["events_delivered"], response.json["events_failed"]) == (1, 0)
    assert [d["body"]["type"] for d in receiver.verified] == ["credits.granted"]
    assert json.loads(server.requests[0].body)["data"]["amount"] == 25


def readme_receiver() -> str:
    """The Python receiver of the README's "Events for your backend"."""
    section = README.read_text().split("## Events for your backend", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_receiver_verifies_and_handles_each_event_once(
    monkeypatch, tmp_path, conn, db, make_user
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVENTS_WEBHOOK_SECRET", SECRET)
    receiver: dict = {"__name__": "readme_receiver"}
    exec(compile(readme_receiver(), "README.md", "exec"), receiver)
    handled: list[dict] = []
    receiver["handle"] = handled.append
    server = make_server("127.0.0.1", 0, receiver["app"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/credit-events"
    make_user(25)
    [event] = conn.execute("select id from public.credit_events").fetchall()
    try:
        forged = EventSender(url, "whsec_" + base64.b64encode(b"someone else's secret").decode())
        assert deliver_events(db, forged) == {"delivered": 0, "failed": 1}
        assert "HTTP 401" in row(conn, event["id"])["last_error"]
        make_due(conn)
        sender = EventSender(url, SECRET)
        assert deliver_events(db, sender) == {"delivered": 1, "failed": 0}
        call(conn, "replay_events", event_ids=[event["id"]])
        assert deliver_events(db, sender) == {"delivered": 1, "failed": 0}  # a repeat: dropped
        forged.close()
        sender.close()
    finally:
        server.shutdown()
        server.server_close()
    assert [(e["id"], e["type"]) for e in handled] == [(str(event["id"]), "credits.granted")]
