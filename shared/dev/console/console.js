// credit-jobs web console. It talks only to the public HTTP functions (docs/http-api.md), the
// way any web client would, so it doubles as an example to copy. On the dev server the functions
// share this page's origin; against a deployment, set window.CREDIT_JOBS_API to the functions'
// base URL (each function answers at <base>/<target>).
"use strict";

const API = window.CREDIT_JOBS_API || "";
const POLL_MS = 500;
const PAGE = 10;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const TOKEN_KEY = "credit-jobs-token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  session: 0, // bumped on sign-in and sign-out, so loops of an old session stop
  kinds: new Map(),
  jobs: new Map(),
  polling: new Set(),
  balance: null,
  creditsRequest: 0, // only the newest GET /credits answer is shown
};

const $ = (selector) => document.querySelector(selector);

class ApiError extends Error {
  constructor(status, code, message, body = {}, retryAfter = null) {
    super(message);
    Object.assign(this, { status, code, body, retryAfter });
  }
}

// One request to one function: JSON in, JSON out; any non-2xx answer becomes an ApiError
// carrying the API's {error: {code, message}} (docs/errors.md).
async function call(target, { method = "GET", query = {}, body, auth = true, headers = {} } = {}) {
  const url = new URL(`${API}/${target}`, location.href);
  for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
  const sent = { ...headers };
  if (auth) sent.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network_error", `cannot reach ${url.origin}`);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || response.statusText, data, response.headers.get("Retry-After"));
  }
  return { status: response.status, data };
}

// What happened and what to do next, in words, for every answer a user can get.
function explain(error, kind) {
  const price = kind ? `${kind.kind} costs ${kind.cost}` : "";
  switch (error.status) {
    case 0:
      return `The API cannot be reached (${error.message}). Is the server running?`;
    case 401:
      return "Your sign-in is not valid any more (expired, or signed for another project). " +
        "Sign in again.";
    case 402:
      return `Not enough credits: ${price ? price + ", " : ""}your balance is ${state.balance}. ` +
        "Nothing was charged.";
    case 429:
      return `Too many jobs at once: ${error.message}. Nothing was charged` +
        `${error.retryAfter ? ` (the API suggests trying again in ${error.retryAfter} s)` : ""}.`;
    case 503:
      if (error.code === "pipeline_unavailable") {
        const refunded = error.body.job ? error.body.job.refunded : kind && kind.cost;
        return "The generation service did not take the job, so it will not run; " +
          `its ${refunded} credits are back on your balance. Try again later.`;
      }
      if (error.code === "database_unavailable") {
        return "The service is briefly unavailable. Nothing was changed; try again in a moment.";
      }
      return `The service is not available: ${error.message}.`;
  }
  if (error.code === "unknown_kind") return `This kind cannot be started now: ${error.message}.`;
  if (error.code === "invalid_transition") {
    return "This job has already finished, so it can no longer be cancelled.";
  }
  return `Something went wrong: ${error.message}.`;
}

function say(text, { error = null } = {}) {
  const box = $("#message");
  box.hidden = false;
  box.className = error ? "error" : "";
  box.textContent = text;
  if (error) {
    const code = document.createElement("code");
    code.textContent = ` (HTTP ${error.status || "–"} ${error.code})`;
    box.append(code);
  }
}

function fail(error, kind) {
  say(explain(error, kind), { error });
  if (error.status === 401) signOut({ quiet: true });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function element(tag, { text, className, attrs = {} } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");

// --- sign-in -------------------------------------------------------------------------------------

function claims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload));
  } catch {
    return {};
  }
}

async function signInAsDemo() {
  try {
    const { data } = await call("dev/token", { auth: false });
    signIn(data.token);
  } catch (error) {
    say("No demo sign-in here (only the dev server on this machine offers one): " +
      "paste an access token instead.", { error });
  }
}

function signIn(token) {
  state.token = token.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  start();
}

function signOut({ quiet = false } = {}) {
  state.token = null;
  state.session += 1;
  sessionStorage.removeItem(TOKEN_KEY);
  state.jobs.clear();
  state.balance = null;
  $("#signed-in").hidden = true;
  $("#signed-out").hidden = false;
  $("#balance").textContent = "–";
  $("#jobs tbody").replaceChildren();
  $("#jobs-empty").hidden = false;
  $("#ledger tbody").replaceChildren();
  $("#grants").hidden = true;
  renderKinds();
  if (!quiet) say("Signed out.");
}

function start() {
  state.session += 1;
  const who = claims(state.token);
  $("#who").textContent = who.email || who.sub || "a user";
  $("#signed-out").hidden = true;
  $("#signed-in").hidden = false;
  renderKinds();
  refreshCredits();
  loadJobs();
}

// --- price list and health (no token needed) -----------------------------------------------------

async function loadKinds() {
  try {
    const { data } = await call("kinds", { auth: false });
    state.kinds = new Map(data.items.map((kind) => [kind.kind, kind]));
    renderKinds();
  } catch (error) {
    $("#kinds").textContent = "";
    fail(error);
  }
}

function renderKinds() {
  const buttons = [...state.kinds.values()].map((kind) => {
    const button = element("button", {
      attrs: { type: "button", "data-kind": kind.kind, title: kind.description },
    }, [`Start ${kind.kind}`, element("small", {
      text: kind.paused ? "paused" : `${kind.cost} credits` +
        (kind.max_active_per_user ? ` · ${kind.max_active_per_user} at a time` : ""),
    })]);
    button.disabled = kind.paused || !state.token;
    button.addEventListener("click", () => generate(kind));
    return button;
  });
  $("#kinds").replaceChildren(...buttons);
}

async function checkHealth() {
  const badge = $("#health");
  try {
    const { data } = await call("health", { auth: false });
    badge.textContent = `API ok · schema ${data.latest_migration}`;
    badge.className = "health ok";
  } catch (error) {
    badge.textContent = `API unavailable: ${error.body.message || error.message}`;
    badge.className = "health down";
  }
}

// --- credits -------------------------------------------------------------------------------------

async function refreshCredits() {
  const request = ++state.creditsRequest;
  try {
    const { data } = await call("credits", { query: { limit: PAGE } });
    if (request !== state.creditsRequest || !state.token) return;
    state.balance = data.balance;
    $("#balance").textContent = data.balance;
    renderGrants(data.grants);
    $("#ledger tbody").replaceChildren(...data.entries.map(ledgerRow));
  } catch (error) {
    fail(error);
  }
}

function renderGrants(grants) {
  // GET /credits lists unexpired grants once credits live in grants; until then there are none.
  const table = $("#grants");
  table.hidden = !Array.isArray(grants) || grants.length === 0;
  if (table.hidden) return;
  table.querySelector("tbody").replaceChildren(...grants.map((grant) => element("tr", {}, [
    element("td", { text: grant.category || grant.source || grant.reason || "grant" }),
    element("td", { text: grant.remaining }),
    element("td", { text: grant.expires_at ? new Date(grant.expires_at).toLocaleString() : "never" }),
  ])));
}

function ledgerRow(entry) {
  const refund = entry.entry_type === "refund";
  return element("tr", { className: refund ? "refund" : "", attrs: {
    "data-entry-type": entry.entry_type,
  } }, [
    element("td", { text: when(entry.created_at) }),
    element("td", {}, [element("span", {
      className: `badge ${entry.entry_type}`,
      text: refund ? "↩ refund" : entry.entry_type,
    })]),
    element("td", {
      className: `amount ${entry.amount > 0 ? "plus" : "minus"}`,
      text: entry.amount > 0 ? `+${entry.amount}` : `${entry.amount}`,
    }),
    element("td", { text: entry.balance_after }),
    element("td", { text: entry.reason }),
  ]);
}

// --- jobs ----------------------------------------------------------------------------------------

async function loadJobs() {
  const session = state.session;
  try {
    const { data } = await call("history", { query: { limit: PAGE } });
    if (session !== state.session) return;
    for (const job of data.items.reverse()) showJob(job);
    for (const job of data.items) if (!TERMINAL.has(job.status)) watch(job.id);
  } catch (error) {
    fail(error);
  }
}

async function generate(kind) {
  const params = { prompt: $("#prompt").value };
  try {
    // A fresh key per click: if this request is retried (a flaky network), it is charged once.
    const headers = crypto.randomUUID ? { "Idempotency-Key": crypto.randomUUID() } : {};
    const { status, data } = await call("generate", {
      method: "POST", body: { kind: kind.kind, params }, headers,
    });
    showJob(data.job);
    say(status === 202
      ? `${kind.kind}: paid (${kind.cost} credits) and waiting for its pipeline; it is retried, ` +
        "or refunded if it never starts."
      : `${kind.kind} started: ${data.job.cost} credits charged.`);
    watch(data.job.id);
  } catch (error) {
    if (error.body.job) showJob(error.body.job);
    fail(error, kind);
  }
  refreshCredits();
}

async function cancel(job) {
  try {
    const { data } = await call("cancel", { method: "POST", body: { job_id: job.id } });
    showJob(data.job);
    say(`${job.kind} cancelled: ${data.job.refunded} credits refunded.`);
  } catch (error) {
    fail(error);
  }
  refreshCredits();
}

// Polls the job until it ends. (With supabase-js, a Realtime subscription on `jobs` would push
// these changes instead: see the README.)
async function watch(jobId) {
  if (state.polling.has(jobId)) return;
  state.polling.add(jobId);
  const session = state.session;
  try {
    while (session === state.session) {
      const { data } = await call("status", { query: { job_id: jobId } });
      if (session !== state.session) break;
      const before = state.jobs.get(jobId);
      showJob(data.job);
      if (before && before.status !== data.job.status) refreshCredits();
      if (TERMINAL.has(data.job.status)) break;
      await sleep(POLL_MS);
    }
  } catch (error) {
    fail(error);
  } finally {
    state.polling.delete(jobId);
  }
}

function summary(job) {
  if (job.status === "failed") return job.error_message || "failed";
  if (job.result == null) return "";
  if (typeof job.result === "object" && typeof job.result.story === "string") {
    return job.result.story;
  }
  return JSON.stringify(job.result);
}

function showJob(job) {
  state.jobs.set(job.id, job);
  const tbody = $("#jobs tbody");
  const existing = tbody.querySelector(`tr[data-job-id="${job.id}"]`);
  const progress = job.status === "completed" ? 100 : job.progress ?? 0;
  const bar = element("progress", { attrs: { max: "100", value: String(progress) } });
  const credits = element("td", { text: `${job.cost}` }, job.refunded > 0
    ? [element("div", { className: "refunded", text: `↩ ${job.refunded} refunded` })]
    : []);
  const action = element("td");
  if (!TERMINAL.has(job.status)) {
    const button = element("button", {
      text: "Cancel", className: "secondary cancel", attrs: { type: "button" },
    });
    button.addEventListener("click", () => cancel(job));
    action.append(button);
  }
  const row = element("tr", { attrs: { "data-job-id": job.id, "data-status": job.status } }, [
    element("td", { text: when(job.created_at) }),
    element("td", { text: job.kind }),
    element("td", {}, [element("span", { className: `badge ${job.status}`, text: job.status })]),
    element("td", { className: "progress" }, [bar, ` ${Math.round(progress)}%`]),
    credits,
    element("td", { className: "result", text: summary(job) }),
    action,
  ]);
  if (existing) existing.replaceWith(row);
  else tbody.prepend(row);
  $("#jobs-empty").hidden = state.jobs.size > 0;
}

// --- wiring --------------------------------------------------------------------------------------

$("#signin-demo").addEventListener("click", signInAsDemo);
$("#signed-out").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("#token-input").value;
  if (token.trim()) signIn(token);
});
$("#signout").addEventListener("click", () => signOut());

checkHealth();
loadKinds().then(() => {
  if (state.token) start();
});
