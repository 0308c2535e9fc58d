"""The dev server's root: the console's files, and the demo token for this machine only."""

from __future__ import annotations

from werkzeug.test import Client

from shared.dev.server import CONSOLE_FILES, DEMO_USER_ID, build_app

TOKEN = "demo.token.value"


def client() -> Client:
    return Client(build_app((), token=TOKEN))


def test_the_console_is_served_at_the_root():
    page = client().get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    for path in CONSOLE_FILES:
        assert client().get(path).status_code == 200, path
    assert '<script src="console.js"' in page.get_data(as_text=True)


def test_the_demo_token_is_handed_to_pages_of_this_machine_only():
    for host in ("127.0.0.1:8080", "localhost:8080"):
        answer = client().get("/dev/token", headers={"Host": host, "Origin": "https://x.test"})
        assert answer.status_code == 200, host
        assert answer.json == {
            "token": TOKEN,
            "user_id": DEMO_USER_ID,
            "email": "demo@credit-jobs.local",
        }
        # no CORS header: a page of another origin cannot read the token
        assert "Access-Control-Allow-Origin" not in answer.headers
        assert answer.headers["Cache-Control"] == "no-store"

    rebound = client().get("/dev/token", headers={"Host": "attacker.test:8080"})
    assert rebound.status_code == 403
    assert rebound.json["error"]["code"] == "forbidden"


def test_without_a_token_there_is_no_token_path():
    answer = Client(build_app(())).get("/dev/token", headers={"Host": "127.0.0.1"})
    assert answer.status_code == 404
    assert answer.json["error"]["code"] == "not_found"
