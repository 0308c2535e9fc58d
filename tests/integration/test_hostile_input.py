"""A hostile client against every function, in-process through functions-framework's WSGI apps.

Every request here must be refused with a 4xx and the error body `{"error": {"code", "message"}}`
(never a 5xx), and a refused request must change no money: the ledger, the balances and the jobs
are the same before and after. Over real sockets (chunked framing): tests/acceptance/
test_hostile_http.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.api.http import MAX_BODY_BYTES, MAX_CALLBACK_BYTES, MAX_JSON_DEPTH
from shared.api.models import PG_INTEGER_MAX
from shared.push.webhooks import sign
from tests.fake_http import fake_server
from tests.integration.http_helpers import (
    JWT_SECRET,
    MAINTENANCE_TOKEN,
    WEBHOOK_SECRET,
    http_api,
    token,
)
from tests.integration.sqlfns import add_kind

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
POST_TARGETS = ("generate", "status", "projects", "steps", "cancel", "maintenance")
LIMITS = {target: MAX_BODY_BYTES for target in POST_TARGETS} | {"status": MAX_CALLBACK_BYTES}
OTHER_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"not the pipeline's secret, 32 b!").decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(b64url(json.dumps(part).encode()) for part in (header, claims)) + (
        "." + b64url(signature)
    )


@pytest.fixture
def jwks():
    public = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    keys = {"keys": [{**public, "kid": "rsa-1", "use": "sig"}]}
    with fake_server(lambda request: (200, keys)) as server:
        yield server.url + "/auth/v1/.well-known/jwks.json"


@pytest.fixture
def pipeline():
    with fake_server() as server:
        yield server


@pytest.fixture
def api(monkeypatch, db_url, pipeline, jwks):
    env = {"PIPELINE": "webhook", "PIPELINE_URL": pipeline.url, "SUPABASE_JWKS_URL": jwks}
    with http_api(monkeypatch, db_url, **env) as client:
        yield client


@pytest.fixture
def world(api, conn, make_user) -> dict[str, Any]:
    """A user with credits and a pushed job, and another user with a project, a step and a job."""
    add_kind(conn, "story", cost=10, max_attempts=1)
    user, other = make_user(balance=100), make_user(balance=100)
    job = api.post("generate", user=user, json_body={"kind": "story"}).json["job"]
    project = api.post("projects", user=other, json_body={"title": "theirs"}).json["project"]
    api.post("steps", user=other, json_body={"project_id": project["id"], "step_number": 1})
    other_job = api.post(
        "generate", user=other, json_body={"kind": "story", "project_id": project["id"]}
    ).json["job"]
    return {"user": user, "job": job, "other": other, "project": project, "other_job": other_job}


def money(conn) -> dict[str, Any]:
    return conn.execute(
        "select (select count(*) from public.credit_ledger) as entries,"
        " (select sum(balance) from public.credit_accounts) as balances,"
        " (select count(*) from public.jobs) as jobs,"
        " (select string_agg(id::text || status || attempt, ',' order by id) from public.jobs)"
        " as job_states"
    ).fetchone()


def refused(response, status: int | None = None) -> dict[str, str]:
    """The error of a refused request: a 4xx (the given one) with exactly code and message."""
    assert 400 <= response.status_code < 500, (response.status_code, response.data[:300])
    if status is not None:
        assert response.status_code == status, response.data[:300]
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert all(isinstance(value, str) for value in body["error"].values()), body
    return body["error"]


def raw(api, method: str, target: str, body: bytes | str, *, user=None, headers=None, query=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    return api.call(method, target, user=user, data=body, headers=headers, query=query)


def callback(api, body: str, *, secret: str = WEBHOOK_SECRET, msg_id: str | None = None):
    return raw(api, "POST", "status", body, headers=sign(secret, msg_id, body))


def chunked(api, target: str, body: bytes, headers: dict[str, str]):
    """POST as a server that decodes `Transfer-Encoding: chunked` hands it on: no Content-Length,
    the stream marked as terminated by the server."""
    return api.client(target).post(
        "/",
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- NUL, lone surrogates, non-finite numbers, depth: one check for every JSON body ---------------

UNSAFE_JSON_VALUES = {
    "nul in a string": '"a\\u0000b"',
    "lone high surrogate": '"\\ud800"',
    "lone low surrogate": '"x\\udc00"',
    "nul in a key": '{"a\\u0000": 1}',
    "surrogate in a key": '{"\\ud800": 1}',
    "nul in a list": '["ok", ["\\u0000"]]',
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "[-Infinity]",
    "1e400": "1e400",
    "-1e400": '{"x": -1e400}',
    "1,500 deep": nested(1500),
    "just too deep": nested(MAX_JSON_DEPTH),
}


def bodies_with(value: str, world: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Where each unsafe JSON value goes in each function's body: (target, body)."""
    job, project = world["job"], world["own_project"]
    report = f'"job_id": "{job["id"]}", "attempt": {job["attempt"]}'
    return {
        "generate params": ("generate", f'{{"kind": "story", "params": {{"p": {value}}}}}'),
        "generate kind": ("generate", f'{{"kind": {value}}}'),
        "project title": ("projects", f'{{"title": {value}}}'),
        "step data": (
            "steps",
            f'{{"project_id": "{project["id"]}", "step_number": 2, "data": {{"d": {value}}}}}',
        ),
        "step skip_reason": (
            "steps",
            f'{{"project_id": "{project["id"]}", "step_number": 2, "skip_reason": {value}}}',
        ),
        "cancel job_id": ("cancel", f'{{"job_id": {value}}}'),
        "callback result": ("status", f'{{{report}, "status": "completed", "result": {value}}}'),
        "callback error": ("status", f'{{{report}, "status": "failed", "error": {value}}}'),
        "callback progress": (
            "status",
            f'{{{report}, "status": "processing", "progress": {value}}}',
        ),
    }


@pytest.fixture
def own_project_world(api, world):
    """The world, plus a project of the user's own (steps are written into it)."""
    project = api.post("projects", user=world["user"], json_body={"title": "mine"}).json["project"]
    return {**world, "own_project": project}


def test_unsafe_json_anywhere_is_400_and_changes_nothing(api, conn, own_project_world):
    before = money(conn)
    for name, value in UNSAFE_JSON_VALUES.items():
        for place, (target, body) in bodies_with(value, own_project_world).items():
            if target == "status":
                response = callback(api, body)
            else:
                response = raw(api, "POST", target, body, user=own_project_world["user"])
            assert refused(response, 400)["code"] == "invalid_request", (name, place)
    assert money(conn) == before


def test_json_at_the_depth_limit_is_accepted(api, conn, world):
    params = nested(MAX_JSON_DEPTH - 2)  # the body is one level, params another
    response = raw(
        api,
        "POST",
        "generate",
        f'{{"kind": "story", "params": {{"p": {params}}}}}',
        user=world["user"],
    )
    assert response.status_code == 201, response.json


def test_valid_unicode_is_kept(api, world):
    body = '{"title": "caf\\u00e9 \\ud83d\\ude00 \\u2713"}'
    response = raw(api, "POST", "projects", body, user=world["user"])
    assert response.status_code == 201
    assert response.json["project"]["title"] == "café 😀 ✓"


QUERY_STRINGS = [
    ("history", "cursor=%00"),
    ("history", "cursor=a%00b&limit=5"),
    ("projects", "cursor=%00"),
    ("credits", "cursor=%00"),
    ("status", "job_id=%00"),
    ("history", "utm_source=%00"),
    ("credits", "%00=1"),
    ("steps", "project_id=%00"),
]


def test_nul_in_any_query_string_is_400(api, conn, world):
    before = money(conn)
    for target, query in QUERY_STRINGS:
        response = api.call("GET", target, user=world["user"], query=query)
        assert refused(response, 400)["code"] == "invalid_request", (target, query)
    assert money(conn) == before


# --- integers beyond PostgreSQL's `integer` ---------------------------------------------------


def test_callback_integers_beyond_32_bits_are_400(api, conn, world):
    before = money(conn)
    for fields in [
        {"attempt": PG_INTEGER_MAX + 1, "status": "processing"},
        {"attempt": 2**63, "status": "processing"},
        {"status": "completed", "credits_used": PG_INTEGER_MAX + 1},
        {"status": "completed", "credits_used": 10**30},
    ]:
        report = {"job_id": world["job"]["id"], "attempt": world["job"]["attempt"], **fields}
        assert refused(callback(api, json.dumps(report)), 400)["code"] == "invalid_request"
    assert money(conn) == before


def test_callback_for_the_largest_attempt_is_stale_not_500(api, conn, world):
    before = money(conn)
    report = {"job_id": world["job"]["id"], "attempt": PG_INTEGER_MAX, "status": "processing"}
    assert refused(callback(api, json.dumps(report)), 409)["code"] == "stale_attempt"
    assert money(conn) == before


# --- oversize, however the body is framed, before authentication ---------------------------------


def oversize_bodies(limit: int) -> dict[str, bytes]:
    return {
        "one byte over": b"x" * (limit + 1),
        "valid JSON then spaces": b'{"kind": "story"}' + b" " * limit,
    }


def credentials(target: str, user: uuid.UUID, body: bytes) -> dict[str, dict[str, str]]:
    """No credentials, forged ones, and the valid ones of `target` (for this body)."""
    if target == "status":
        valid = sign(WEBHOOK_SECRET, None, body)
    elif target == "maintenance":
        valid = {"Authorization": f"Bearer {MAINTENANCE_TOKEN}"}
    else:
        valid = {"Authorization": f"Bearer {token(user)}"}
    return {"none": {}, "forged": {"Authorization": "Bearer forged"}, "valid": valid}


@pytest.mark.parametrize("target", POST_TARGETS)
def test_oversize_is_413_on_every_post_however_framed_whatever_the_token(api, conn, world, target):
    before = money(conn)
    for name, body in oversize_bodies(LIMITS[target]).items():
        for who, headers in credentials(target, world["user"], body).items():
            for framing in ("content-length", "chunked"):
                if framing == "chunked":
                    response = chunked(api, target, body, headers)
                else:
                    response = raw(api, "POST", target, body, headers=headers)
                code = refused(response, 413)["code"]
                assert code == "payload_too_large", (name, who, framing)
    assert money(conn) == before


def test_a_body_at_the_limit_is_read_whole(api, conn, world):
    body = b'{"kind": "story"}'
    body += b" " * (MAX_BODY_BYTES - len(body))
    response = chunked(api, "generate", body, {"Authorization": f"Bearer {token(world['user'])}"})
    assert response.status_code == 201, response.json


# --- wrong types and wrong content types ---------------------------------------------------------

WRONG_BODIES = [
    ("generate", "[]"),
    ("generate", '"story"'),
    ("generate", "null"),
    ("generate", "1"),
    ("generate", ""),
    ("generate", '{"kind": 1}'),
    ("generate", '{"kind": null}'),
    ("generate", '{"kind": ["story"]}'),
    ("generate", '{"kind": "story", "params": []}'),
    ("generate", '{"kind": "story", "params": "x"}'),
    ("generate", '{"kind": "story", "project_id": 5}'),
    ("generate", '{"kind": "story", "step_number": "one"}'),
    ("generate", '{"kind": "story", "step_number": 1.5}'),
    ("generate", '{"kind": "story", "step_number": 1e400}'),
    ("generate", '{"kind": "story", "step_number": 99999999999999999999}'),
    ("generate", '{"kind": "story", "kind": {"a": 1}}'),
    ("projects", '{"title": []}'),
    ("projects", '{"title": {}}'),
    ("projects", '{"title": "   "}'),
    ("steps", '{"project_id": "x", "step_number": 1}'),
    ("steps", '{"project_id": null, "step_number": 1}'),
    ("cancel", '{"job_id": 1}'),
    ("cancel", '{"job_id": "00000000-0000-0000-0000-00000000000g"}'),
]


NOT_JSON = [
    ("application/x-www-form-urlencoded", b"kind=story"),
    (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="kind"\r\n\r\nstory\r\n--x--\r\n',
    ),
    ("text/plain", b"story please"),
    ("application/json", b'{"kind": "st\xffory"}'),
    ("application/json", b"\xef\xbb\xbf\xef\xbb\xbf{}"),
    ("application/xml", b"<kind>story</kind>"),
]
WRONG_QUERIES = [
    ("history", "limit=abc"),
    ("history", "limit=0"),
    ("history", f"limit={10**30}"),
    ("history", "status=done"),
    ("credits", "limit=-1"),
    ("projects", "project_id=1"),
    ("status", ""),
    ("steps", ""),
]


def test_wrong_types_and_bodies_that_are_not_json_are_400(api, conn, world):
    before = money(conn)
    for target, body in WRONG_BODIES:
        response = raw(api, "POST", target, body, user=world["user"])
        assert refused(response, 400)["code"] == "invalid_request", (target, body)
    for content_type, body in NOT_JSON:
        headers = {"Content-Type": content_type}
        response = raw(api, "POST", "generate", body, user=world["user"], headers=headers)
        assert refused(response, 400)["code"] == "invalid_request", (content_type, body)
    for target, query in WRONG_QUERIES:
        response = api.call("GET", target, user=world["user"], query=query)
        assert refused(response, 400)["code"] == "invalid_request", (target, query)
    assert money(conn) == before


# --- forged tokens -------------------------------------------------------------------------------


def forged_tokens(user: uuid.UUID) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": str(user), "aud": "authenticated", "iat": now, "exp": now + 600}
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_with_public_key = unsigned_token({"alg": "HS256", "kid": "rsa-1"}, claims)
    signing_input = hs_with_public_key.rsplit(".", 1)[0]
    confusion = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return {
        "alg none": unsigned_token({"alg": "none", "typ": "JWT"}, claims),
        "alg None": unsigned_token({"alg": "None"}, claims),
        "alg is a list": unsigned_token({"alg": ["HS256"]}, claims, b"sig"),
        "alg is an object": unsigned_token({"alg": {"HS256": True}}, claims, b"sig"),
        "alg is a number": unsigned_token({"alg": 256}, claims, b"sig"),
        "no alg": unsigned_token({"typ": "JWT"}, claims, b"sig"),
        "header is a list": ".".join([b64url(b"[]"), b64url(json.dumps(claims).encode()), "c2ln"]),
        "wrong secret": token(user, secret="another-secret-that-is-long-enough-for-hs256"),
        "expired": token(user, exp=now - 3600),
        "wrong audience": token(user, aud="anon"),
        "no exp": token(user, exp=None),
        "sub not a uuid": token(user, sub="admin"),
        "sub is an object": token(user, sub={"id": str(user)}),
        "HS256 signed with the RSA public key": f"{signing_input}.{b64url(confusion)}",
        "RS256 with an unknown kid": jwt.encode(claims, RSA_KEY, "RS256", headers={"kid": "x"}),
        "RS256 signed by another key": jwt.encode(
            claims,
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "RS256",
            headers={"kid": "rsa-1"},
        ),
        "HS512": jwt.encode(claims, JWT_SECRET * 2, "HS512"),
        "garbage": "a.b.c",
        "not base64": "!!!.###.$$$",
    }


def test_forged_tokens_are_401_everywhere_and_charge_nothing(api, conn, world):
    genuine = jwt.encode(
        {"sub": str(world["user"]), "aud": "authenticated", "exp": int(time.time()) + 600},
        RSA_KEY,
        "RS256",
        headers={"kid": "rsa-1"},
    )
    ok = api.get("credits", headers={"Authorization": f"Bearer {genuine}"})
    assert ok.status_code == 200  # the JWKS path itself works
    before = money(conn)
    for name, forged in forged_tokens(world["user"]).items():
        for method, target, body in [
            ("POST", "generate", '{"kind": "story"}'),
            ("POST", "cancel", json.dumps({"job_id": world["job"]["id"]})),
            ("GET", "history", None),
            ("GET", "credits", None),
            ("POST", "projects", '{"title": "t"}'),
        ]:
            response = api.call(
                method,
                target,
                data=body,
                headers={"Authorization": f"Bearer {forged}", "Content-Type": "application/json"},
            )
            assert refused(response, 401)["code"] == "unauthorized", (name, target)
    assert money(conn) == before


def test_a_valid_token_for_an_unknown_user_is_refused_or_empty(api, conn, world):
    before = money(conn)
    stranger = uuid.uuid4()
    generate = api.post("generate", user=stranger, json_body={"kind": "story"})
    refused(generate)
    assert api.get("credits", user=stranger).status_code in (200, 404)
    assert money(conn) == before


def test_the_maintenance_token_is_not_a_user_token_and_vice_versa(api, conn, world):
    before = money(conn)
    as_user = api.post(
        "generate",
        headers={"Authorization": f"Bearer {MAINTENANCE_TOKEN}"},
        json_body={"kind": "story"},
    )
    assert refused(as_user, 401)
    as_maintenance = api.post("maintenance", user=world["user"])
    assert refused(as_maintenance, 401)
    assert money(conn) == before


# --- forged and replayed webhooks ----------------------------------------------------------------


def test_forged_webhooks_are_401_and_change_nothing(api, conn, world):
    job = world["job"]
    done = json.dumps(
        {"job_id": job["id"], "attempt": job["attempt"], "status": "completed", "credits_used": 0}
    )
    good = sign(WEBHOOK_SECRET, "msg_forged", done)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    forged = {
        "unsigned": {},
        "wrong secret": sign(OTHER_WEBHOOK_SECRET, None, done),
        "ten minutes old": sign(WEBHOOK_SECRET, None, done, old),
        "signature of another message id": {**good, "webhook-id": "msg_other"},
        "signature of another timestamp": {**good, "webhook-timestamp": str(int(time.time()) - 1)},
        "signature not base64": {**good, "webhook-signature": "v1,@@@"},
        "no version": {**good, "webhook-signature": good["webhook-signature"].split(",", 1)[1]},
        "timestamp not a number": {**good, "webhook-timestamp": "soon"},
        "empty signature": {**good, "webhook-signature": ""},
    }
    before = money(conn)
    for name, headers in forged.items():
        response = raw(api, "POST", "status", done, headers=headers)
        assert refused(response, 401)["code"] == "invalid_signature", name
    tampered = raw(
        api, "POST", "status", done.replace('"credits_used": 0', '"credits_used": 10'), headers=good
    )
    assert refused(tampered, 401)["code"] == "invalid_signature"
    assert money(conn) == before


def test_a_replayed_webhook_refunds_once(api, conn, world):
    job = world["job"]
    failed = json.dumps(
        {"job_id": job["id"], "attempt": job["attempt"], "status": "failed", "error": "boom"}
    )
    headers = sign(WEBHOOK_SECRET, "msg_replayed", failed)
    first = raw(api, "POST", "status", failed, headers=headers)
    assert first.status_code == 200 and first.json["outcome"] == "refunded", first.json
    after_first = money(conn)
    for _ in range(3):
        again = raw(api, "POST", "status", failed, headers=headers)
        assert again.status_code == 200 and again.json["outcome"] == "duplicate", again.json
    assert money(conn) == after_first
    completed = json.dumps({"job_id": job["id"], "attempt": job["attempt"], "status": "completed"})
    assert refused(callback(api, completed), 409)["code"] == "invalid_transition"
    assert money(conn) == after_first


# --- other users' ids ----------------------------------------------------------------------------


def test_other_users_ids_are_404_and_show_nothing_of_theirs(api, conn, world):
    user, project, other_job = world["user"], world["project"], world["other_job"]
    before = money(conn)
    attempts = [
        api.get("status", user=user, query={"job_id": other_job["id"]}),
        api.post("cancel", user=user, json_body={"job_id": other_job["id"]}),
        api.get("projects", user=user, query={"project_id": project["id"]}),
        api.get("steps", user=user, query={"project_id": project["id"]}),
        api.post(
            "steps",
            user=user,
            json_body={
                "project_id": project["id"],
                "step_number": 1,
                "data": {"overwritten": True},
            },
        ),
        api.post("generate", user=user, json_body={"kind": "story", "project_id": project["id"]}),
    ]
    for response in attempts:
        assert refused(response, 404)["code"] == "not_found"
        text = response.get_data(as_text=True)
        assert "theirs" not in text and str(world["other"]) not in text
    assert money(conn) == before
    step = conn.execute(
        "select data from public.project_steps where project_id = %s", (project["id"],)
    ).fetchone()
    assert step["data"] == {}
