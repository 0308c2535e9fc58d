"""After a fault run: every money invariant from SQL, then every answer anyone received (clients,
the pipeline, the queue workers) against the final state of the database."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.faults.clients import TERMINAL, Answer
from tests.integration.sqlfns import (
    broken_balance_after_chain,
    discrepancies,
    unpaid_or_orphan_charges,
)

MAX_EXAMPLES = 5


@dataclass
class Check:
    name: str
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    def expect(self, ok: bool, failure: str) -> None:
        self.checked += 1
        if not ok:
            self.failures.append(failure)

    def rows(self, checked: int, bad: Iterable[Any]) -> Check:
        """A check over `checked` rows of which `bad` broke the rule."""
        self.checked += checked
        self.failures.extend(str(dict(row)) for row in bad)
        return self

    @property
    def ok(self) -> bool:
        return not self.failures


def _all(conn: psycopg.Connection, query: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query).fetchall()


def _count(conn: psycopg.Connection, query: str) -> int:
    return conn.execute(query).fetchone()[0]


def money_checks(conn: psycopg.Connection) -> list[Check]:
    accounts = _count(conn, "select count(*) from public.credit_accounts")
    entries = _count(conn, "select count(*) from public.credit_ledger")
    jobs = _count(conn, "select count(*) from public.jobs")
    terminal = "status in ('completed', 'failed', 'cancelled')"
    return [
        Check("credit_discrepancies is empty").rows(accounts, discrepancies(conn)),
        Check("no negative balance").rows(
            accounts + entries,
            _all(
                conn,
                "select user_id, balance from public.credit_accounts where balance < 0"
                " union all select user_id, balance_after from public.credit_ledger"
                " where balance_after < 0",
            ),
        ),
        Check("every ledger balance_after is the running sum").rows(
            entries, broken_balance_after_chain(conn)
        ),
        Check("each priced job charged exactly once, its price; no charge without a job").rows(
            jobs, unpaid_or_orphan_charges(conn)
        ),
        Check("at most one refund per job, and it is jobs.refunded").rows(
            jobs,
            _all(
                conn,
                "select j.id, j.refunded, count(l.id) as refunds, sum(l.amount) as amount"
                " from public.jobs j left join public.credit_ledger l"
                "   on l.job_id = j.id and l.entry_type = 'refund'"
                " group by j.id having count(l.id) > 1 or coalesce(sum(l.amount), 0) <> j.refunded",
            ),
        ),
        Check("terminal jobs: price - refunds = credits_used (jobs and ledger)").rows(
            _count(conn, f"select count(*) from public.jobs where {terminal}"),
            _all(
                conn,
                "select j.id, j.status, j.cost, j.refunded, j.credits_used, -sum(l.amount) as net"
                " from public.jobs j left join public.credit_ledger l on l.job_id = j.id"
                f" where j.{terminal}"
                " group by j.id"
                " having j.cost - j.refunded <> coalesce(j.credits_used, 0)"
                "   or coalesce(-sum(l.amount), 0) <> coalesce(j.credits_used, 0)",
            ),
        ),
        Check("no job left in flight after convergence").rows(
            jobs,
            _all(
                conn,
                "select id, kind, status, attempt, dispatched_at, lease_expires_at"
                " from public.jobs where status in ('pending', 'processing')",
            ),
        ),
        Check("one job per Idempotency-Key").rows(
            jobs,
            _all(
                conn,
                "select user_id, idempotency_key, count(*) from public.jobs"
                " where idempotency_key is not null group by 1, 2 having count(*) > 1",
            ),
        ),
    ]


@dataclass
class FinalState:
    jobs: dict[str, dict[str, Any]]  # by id
    by_key: dict[tuple[uuid.UUID, str], dict[str, Any]]
    ledger: dict[str, list[tuple[str, int, int]]]  # job id -> [(entry_type, amount, balance_after)]

    @classmethod
    def read(cls, conn: psycopg.Connection) -> FinalState:
        jobs = {str(job["id"]): job for job in _all(conn, "select * from public.jobs")}
        by_key = {
            (job["user_id"], job["idempotency_key"]): job
            for job in jobs.values()
            if job["idempotency_key"]
        }
        ledger: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for entry in _all(
            conn,
            "select job_id, entry_type, amount, balance_after from public.credit_ledger"
            " where job_id is not null order by id",
        ):
            ledger[str(entry["job_id"])].append(
                (entry["entry_type"], entry["amount"], entry["balance_after"])
            )
        return cls(jobs, by_key, ledger)

    def entries(self, job: dict[str, Any], entry_type: str) -> list[tuple[str, int, int]]:
        return [entry for entry in self.ledger[str(job["id"])] if entry[0] == entry_type]

    def charged(self, job: dict[str, Any]) -> bool:
        return job["cost"] == 0 or [e[1] for e in self.entries(job, "charge")] == [-job["cost"]]

    def refunded(self, job: dict[str, Any]) -> bool:
        refunds = [amount for _, amount, _ in self.entries(job, "refund")]
        return job["refunded"] == job["cost"] and sum(refunds) == job["cost"]

    def balance_after(self, job: dict[str, Any] | None, entry_type: str) -> int | None:
        entries = self.entries(job, entry_type) if job else []
        return entries[0][2] if len(entries) == 1 else None


def describe(answer: Answer, job: dict[str, Any] | None) -> str:
    final = "missing" if job is None else f"{job['status']} attempt {job['attempt']}"
    seen = f" {answer.job['status']}" if answer.job else ""
    return (
        f"client {answer.client} {answer.op} key={answer.key} -> {answer.label}{seen}"
        f" (job {answer.job and answer.job.get('id')}; final: {final})"
    )


def answer_checks(
    state: FinalState,
    answers: list[Answer],
    users: list[uuid.UUID],
    callbacks: list[dict[str, Any]],
    worker_done: list[dict[str, Any]],
) -> list[Check]:
    created = Check("a 201 or 202 job exists, is the request's, and is charged")
    refused = Check("a 503 pipeline_unavailable job is failed and refunded (answer and final)")
    same_job = Check("every answer for one Idempotency-Key names the key's one job")
    replays = Check("a 200 replay returns the same job, marked replayed")
    nothing = Check("a refused purchase (402, 422) created no job for its request")
    cancelled = Check("a cancel answered 200 left the job cancelled and refunded")
    too_late = Check("a cancel answered 409 found the job already completed or failed")
    terminal = Check("a terminal status in any answer is the final status")
    balance = Check("the balance in a 201/202 or a refunding cancel is the ledger's after it")
    no_500 = Check("no answer was a 500")

    by_key: dict[tuple[int, str], list[Answer]] = defaultdict(list)
    for answer in answers:
        no_500.expect(answer.status != 500, describe(answer, None))
        job = state.jobs.get(answer.job["id"]) if answer.job else None
        if answer.job and answer.job.get("status") in TERMINAL:
            terminal.expect(
                job is not None and job["status"] == answer.job["status"], describe(answer, job)
            )
        if answer.op == "generate":
            by_key[answer.client, answer.key].append(answer)
            if answer.status in (201, 202):
                user = users[answer.client]
                created.expect(
                    job is not None
                    and job["user_id"] == user
                    and job["idempotency_key"] == answer.key
                    and job["kind"] == answer.body["kind"]
                    and job["params"] == answer.body["params"]
                    and state.charged(job),
                    describe(answer, job),
                )
                # a fresh job: the balance is the charge's (a job the pipeline reported on, or a
                # retried one, is answered with the balance of that moment)
                fresh = answer.job["status"] == "pending" and answer.job["attempt"] <= 1
                if fresh and job is not None and job["cost"]:
                    expected = state.balance_after(job, "charge")
                    balance.expect(
                        answer.balance == expected, f"{describe(answer, job)}: ledger {expected}"
                    )
            elif answer.status == 503 and answer.code == "pipeline_unavailable":
                said = answer.job or {}
                refused.expect(
                    said.get("status") == "failed"
                    and said.get("refunded") == said.get("cost")
                    and job is not None
                    and job["status"] == "failed"
                    and state.refunded(job),
                    describe(answer, job),
                )
        elif answer.op == "cancel" and answer.status == 200:
            cancelled.expect(
                job is not None and job["status"] == "cancelled" and state.refunded(job),
                describe(answer, job),
            )
            if answer.outcome == "refunded" and job is not None and job["cost"]:
                expected = state.balance_after(job, "refund")
                balance.expect(
                    answer.balance == expected, f"{describe(answer, job)}: ledger {expected}"
                )
        elif answer.op == "cancel" and answer.status == 409:
            job = state.jobs.get(answer.body["job_id"])
            too_late.expect(
                job is not None and job["status"] in ("completed", "failed"), describe(answer, job)
            )

    for (client, key), tries in by_key.items():
        job = state.by_key.get((users[client], key))
        for answer in tries:
            if answer.job:
                same_job.expect(
                    job is not None and answer.job["id"] == str(job["id"]), describe(answer, job)
                )
            if answer.status == 200:
                replays.expect(
                    answer.replayed and job is not None and answer.job["id"] == str(job["id"]),
                    describe(answer, job),
                )
            if answer.status == 402:
                # a later request under the same key may create the job (the refused one did not)
                sent = answer.t - answer.seconds
                nothing.expect(
                    job is None or job["created_at"].timestamp() > sent, describe(answer, job)
                )
            if answer.status == 422 and answer.code == "idempotency_key_reused":
                nothing.expect(
                    job is None or job["params"] != answer.body["params"], describe(answer, job)
                )
    return [
        created,
        refused,
        same_job,
        replays,
        nothing,
        cancelled,
        too_late,
        terminal,
        balance,
        no_500,
        *pipeline_checks(state, callbacks),
        worker_check(state, worker_done),
    ]


def pipeline_checks(state: FinalState, callbacks: list[dict[str, Any]]) -> list[Check]:
    kept = Check("a completion answered `applied` was never overwritten")
    once = Check("at most one completion per job answered `applied`")
    ended = Check("a terminal job in a callback's answer kept that status")
    no_500 = Check("no pipeline callback was answered 500")
    applied: dict[str, int] = defaultdict(int)
    for callback in callbacks:
        no_500.expect(callback["http"] != 500, str(callback))
        job = state.jobs.get(callback["job_id"])
        if callback["http"] == 200 and callback["job_status"] in TERMINAL:
            ended.expect(job is not None and job["status"] == callback["job_status"], str(callback))
        if callback["http"] != 200 or callback["outcome"] != "applied":
            continue
        if callback["status"] == "completed":
            applied[callback["job_id"]] += 1
            kept.expect(
                job is not None
                and job["status"] == "completed"
                and job["attempt"] == callback["attempt"]
                and job["result"] == callback["result"],
                f"{callback} -> final {job and (job['status'], job['attempt'], job['result'])}",
            )
    for job_id, count in applied.items():
        once.expect(count == 1, f"job {job_id}: {count} completions applied")
    return [kept, once, ended, no_500]


def worker_check(state: FinalState, worker_done: list[dict[str, Any]]) -> Check:
    check = Check("a queue worker's completion was never overwritten")
    for event in worker_done:
        if event.get("outcome") == "completed":
            job = state.jobs.get(event["job_id"])
            check.expect(
                job is not None
                and job["status"] == "completed"
                and job["attempt"] == event["attempt"],
                f"{event} -> final {job and (job['status'], job['attempt'])}",
            )
    return check
