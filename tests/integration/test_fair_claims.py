"""Fair claims: within a kind, waiting jobs are started round robin across users (jobs.fair_key),
by claim_jobs and by take_jobs_to_dispatch, so one user's backlog never starves anyone else's job
(docs/lifecycle.md#fair-order)."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.sqlfns import add_kind, call, claim, create_job, job_row

pytestmark = pytest.mark.integration

HEAVY_JOBS = 10_000
OTHER_USERS = 100


def backlog(conn: psycopg.Connection, user, kind: str, jobs: int) -> None:
    """`jobs` free pending jobs for `user`, inserted in one statement (each takes its place in
    the fair order through the insert trigger, as create_job's insert does)."""
    project = conn.execute(
        "insert into public.projects (user_id, title) values (%s, 'backlog') returning id",
        (user,),
    ).fetchone()["id"]
    conn.execute(
        "insert into public.jobs (user_id, project_id, kind, cost)"
        " select %s, %s, %s, 0 from generate_series(1, %s)",
        (user, project, kind, jobs),
    )


@pytest.fixture
def one_heavy_user_and_many_light(conn, make_user) -> tuple[object, list]:
    add_kind(conn, "video", 0)
    heavy = make_user()
    backlog(conn, heavy, "video", HEAVY_JOBS)
    light = [make_user() for _ in range(OTHER_USERS)]
    for user in light:
        create_job(conn, user, "video")
    return heavy, light


def owners(conn: psycopg.Connection, jobs: list[dict]) -> list:
    return [job_row(conn, job["id"])["user_id"] for job in jobs]


def test_one_at_a_time_the_next_claims_serve_the_other_users(conn, one_heavy_user_and_many_light):
    heavy, light = one_heavy_user_and_many_light
    served = owners(conn, [job for _ in range(OTHER_USERS) for job in claim(conn, ["video"])])
    assert len(served) == OTHER_USERS
    others = set(served) - {heavy}
    assert len(others) >= 90
    assert others <= set(light)
    assert heavy in served  # round robin: the heavy user keeps its turn


def test_in_batches_the_next_claims_serve_the_other_users(conn, one_heavy_user_and_many_light):
    heavy, _ = one_heavy_user_and_many_light
    served = owners(conn, [job for _ in range(10) for job in claim(conn, ["video"], limit=10)])
    assert len(served) == OTHER_USERS
    assert len(set(served) - {heavy}) >= 90


def test_a_retry_queues_behind_its_owners_waiting_jobs(conn, make_user):
    add_kind(conn, "video", 1, retry_delay_seconds=60)
    a, b = make_user(10), make_user(10)
    a1, a2, a3 = (create_job(conn, a, "video") for _ in range(3))
    b1, b2 = (create_job(conn, b, "video") for _ in range(2))
    (first,) = claim(conn, ["video"])
    assert first["id"] == a1["id"]
    call(conn, "fail_job", job_id=a1["id"], attempt=1, error="busy", retryable=True)
    assert job_row(conn, a1["id"])["fair_key"] is None  # no place while it waits out its delay
    conn.execute("update public.jobs set available_at = now() where id = %s", (a1["id"],))

    order = [job["id"] for _ in range(5) for job in claim(conn, ["video"])]
    assert order == [a2["id"], b1["id"], a3["id"], b2["id"], a1["id"]]


def test_pushed_retries_are_dispatched_fairly(conn, make_user):
    add_kind(conn, "video", 1)
    conn.execute("update public.job_kinds set pipeline = 'webhook' where kind = 'video'")
    a, b = make_user(10), make_user(10)
    jobs = [create_job(conn, a, "video") for _ in range(9)] + [create_job(conn, b, "video")]
    for job in jobs:  # every pipeline refused its first attempt, B's last
        call(conn, "fail_job", job_id=job["id"], attempt=1, error="busy", retryable=True)

    taken = call(conn, "take_jobs_to_dispatch", limit=3)["jobs"]
    assert jobs[-1]["id"] in {job["id"] for job in taken}
    assert all(job["attempt"] == 2 for job in taken)


def test_claims_over_several_kinds_take_each_kind_in_turn(conn, make_user):
    add_kind(conn, "video", 0)
    add_kind(conn, "image", 0)
    a, b = make_user(), make_user()
    for _ in range(3):
        create_job(conn, a, "video")
    for _ in range(3):
        create_job(conn, b, "image")
    kinds = [job["kind"] for job in claim(conn, None, limit=4)]
    assert sorted(kinds) == ["image", "image", "video", "video"]


def test_cancelled_jobs_leave_gaps_that_delay_nobody(conn, make_user):
    add_kind(conn, "video", 0)
    a, b = make_user(), make_user()
    a_jobs = [create_job(conn, a, "video") for _ in range(5)]
    for job in a_jobs[1:4]:
        call(conn, "cancel_job", job_id=job["id"], user_id=a)
    b1 = create_job(conn, b, "video")
    order = [job["id"] for _ in range(3) for job in claim(conn, ["video"])]
    assert order == [a_jobs[0]["id"], b1["id"], a_jobs[4]["id"]]
