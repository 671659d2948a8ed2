// Settle's admin page: transactions (filters, paging, bulk retry), one transaction (branches,
// a saga's steps as a chain or DAG, timeline of attempts, messages, retry now, force stop),
// the outbox backlog and dead letters, the instances sharing the database, and topics
// (subscribers, subscribe, unsubscribe, delete). Everything comes from the coordinator's
// operator routes; nothing is loaded from elsewhere. Data is put into the page as text only.
"use strict";

const TOKEN_KEY = "settle-operator-token";
const main = document.getElementById("main");

// ---- small helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function pad(n, w) { return String(n).padStart(w || 2, "0"); }

function fmtTime(ms) {
  if (ms === undefined || ms === null) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function fmtAgo(ms, now) {
  if (ms === undefined || ms === null) return "";
  let s = Math.round((now - ms) / 1000);
  const future = s < 0;
  s = Math.abs(s);
  const text = s < 90 ? `${s}s` : s < 5400 ? `${Math.round(s / 60)}m` :
    s < 172800 ? `${Math.round(s / 3600)}h` : `${Math.round(s / 86400)}d`;
  return future ? `in ${text}` : `${text} ago`;
}

function status(s) { return el("span", { class: `status ${s}`, text: s }); }

function excerpt(s, n) {
  if (!s) return "";
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

let toastTimer;
function toast(text, isError) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = isError ? "error" : "";
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, isError ? 8000 : 4000);
}

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

function askToken() {
  const dialog = document.getElementById("login");
  const input = document.getElementById("login-token");
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
      resolve(Boolean(input.value));
    }, { once: true });
    dialog.showModal();
  });
}

class ApiError extends Error {}

// Calls an operator route; asks for the token when the coordinator wants one.
async function api(path, options) {
  for (let round = 0; round < 3; round++) {
    const headers = { "Accept": "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const init = { method: (options && options.method) || "GET", headers };
    if (options && options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      if (!(await askToken())) throw new ApiError("an operator token is needed");
      continue;
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!response.ok) {
      const message = (body && body.message) || text || response.statusText;
      throw new ApiError(`${response.status}: ${message}`);
    }
    return body;
  }
  throw new ApiError("the token was refused");
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "" && v !== false) q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ---- routing -------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, search] = raw.split("?");
  return { path, params: new URLSearchParams(search || "") };
}

async function render() {
  const { path, params } = parseHash();
  for (const a of document.querySelectorAll("header nav a")) a.classList.remove("active");
  try {
    if (path.startsWith("/txn/")) {
      document.getElementById("nav-transactions").classList.add("active");
      await renderTransaction(decodeURIComponent(path.slice(5)));
    } else if (path === "/outbox") {
      document.getElementById("nav-outbox").classList.add("active");
      await renderOutbox();
    } else if (path === "/instances") {
      document.getElementById("nav-instances").classList.add("active");
      await renderInstances();
    } else if (path === "/topics") {
      document.getElementById("nav-topics").classList.add("active");
      await renderTopics();
    } else {
      document.getElementById("nav-transactions").classList.add("active");
      await renderList(params);
    }
  } catch (e) {
    main.replaceChildren(el("h1", { text: "Cannot load this page" }),
      el("p", { class: "err", id: "load-error", text: e.message }));
  }
}

window.addEventListener("hashchange", render);
document.getElementById("refresh").addEventListener("click", render);

// ---- transactions --------------------------------------------------------------------

const FILTERS = ["status", "type", "gid_prefix", "from", "to", "overdue", "retried_more_than"];

function filterOf(params) {
  const f = {};
  for (const k of FILTERS) {
    const v = params.get(k);
    if (v !== null && v !== "") f[k] = v;
  }
  return f;
}

function localInput(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function filterForm(f) {
  const select = (name, label, options) => el("label", {}, label,
    el("select", { name, id: `filter-${name}` }, options.map(([v, t]) =>
      el("option", { value: v, selected: (f[name] || "") === v, text: t }))));
  const input = (name, label, attrs) => el("label", {}, label,
    el("input", Object.assign({ name, id: `filter-${name}`, value: f[name] || "" }, attrs)));
  const stuck = f.overdue ? "overdue" : f.retried_more_than !== undefined ? "retried" : "";
  const form = el("form", { class: "filters", id: "filters" },
    select("status", "Status", [["", "any"], ["prepared", "prepared"], ["submitted", "submitted"],
      ["aborting", "aborting"], ["succeed", "succeed"], ["failed", "failed"]]),
    select("type", "Type", [["", "any"], ["tcc", "tcc"], ["msg", "msg"], ["saga", "saga"], ["xa", "xa"]]),
    input("gid_prefix", "Gid starts with", { placeholder: "order-", size: 16 }),
    el("label", {}, "Created from", el("input", { type: "datetime-local", name: "from", value: localInput(f.from) })),
    el("label", {}, "Created to", el("input", { type: "datetime-local", name: "to", value: localInput(f.to) })),
    el("label", {}, "Stuck", el("select", { name: "stuck", id: "filter-stuck" },
      el("option", { value: "", selected: stuck === "", text: "any" }),
      el("option", { value: "overdue", selected: stuck === "overdue", text: "overdue" }),
      el("option", { value: "retried", selected: stuck === "retried", text: "retried more than N times" }))),
    input("retried_more_than", "N", { type: "number", min: 0, size: 4, placeholder: "3" }),
    el("button", { type: "submit", class: "primary", id: "apply-filters", text: "Apply" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = {};
    for (const k of ["status", "type", "gid_prefix"]) next[k] = data.get(k);
    for (const k of ["from", "to"]) {
      const v = data.get(k);
      if (v) next[k] = new Date(v).getTime();
    }
    if (data.get("stuck") === "overdue") next.overdue = "true";
    if (data.get("stuck") === "retried") next.retried_more_than = data.get("retried_more_than") || "3";
    location.hash = `#/${query(next)}`;
  });
  return form;
}

async function renderList(params) {
  const f = filterOf(params);
  const position = params.get("position") || "";
  const page = await api(`/api/admin/transactions${query(Object.assign({}, f, { position, limit: 50 }))}`);
  const now = page.now;
  const rows = page.transactions.map((t) => el("tr", { class: "txn-row", "data-gid": t.gid },
    el("td", {}, el("a", { class: "gid mono", href: `#/txn/${encodeURIComponent(t.gid)}`, text: t.gid })),
    el("td", { text: t.trans_type }),
    el("td", {}, status(t.status), t.overdue ? el("span", { class: "flag", text: "overdue" }) : null),
    el("td", { title: fmtTime(t.create_ms), text: fmtAgo(t.create_ms, now) }),
    el("td", { class: "num", text: t.retry_count }),
    el("td", { title: fmtTime(t.next_cron_ms), text: t.status === "succeed" || t.status === "failed" ? "" : fmtAgo(t.next_cron_ms, now) }),
    el("td", { class: "err", title: t.last_error, text: excerpt(t.last_error, 120) })));
  const bulk = el("button", { type: "button", id: "bulk-retry", text: "Retry now: all matching" });
  bulk.addEventListener("click", async () => {
    const described = Object.keys(f).length ? "every unfinished transaction matching these filters" : "every unfinished transaction";
    if (!(await confirmAction(`Make ${described} that waits for a retry due now?`))) return;
    const filter = Object.assign({}, f);
    for (const k of ["from", "to", "retried_more_than"]) if (filter[k] !== undefined) filter[k] = Number(filter[k]);
    if (filter.overdue !== undefined) filter.overdue = filter.overdue === "true";
    try {
      const answer = await api("/api/admin/retry", { method: "POST", body: filter });
      toast(`${answer.retried} transaction(s) made due now`);
      await render();
    } catch (e) { toast(e.message, true); }
  });
  const pager = el("div", { class: "pager" },
    position ? el("a", { href: `#/${query(f)}`, id: "first-page", text: "« Newest" }) : null,
    page.next_position ? el("a", { href: `#/${query(Object.assign({}, f, { position: page.next_position }))}`, id: "next-page", text: "Older »" }) : null,
    el("span", { class: "muted", text: `${page.transactions.length} shown` }));
  main.replaceChildren(
    el("h1", { text: "Transactions" }),
    filterForm(f),
    el("div", { class: "actions" }, bulk),
    el("table", { id: "transactions" },
      el("thead", {}, el("tr", {}, ["Gid", "Type", "Status", "Created", "Retries", "Next attempt", "Last error"]
        .map((h) => el("th", { class: h === "Retries" ? "num" : null, text: h })))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No transaction matches." })))),
    pager);
}

// The events of one transaction, oldest first: created, each unsettled round, each branch
// call that finished, the decision to roll back, the end.
function timeline(d) {
  const t = d.transaction;
  const events = [{ at: t.create_ms, kind: "", text: `${t.trans_type} prepared` }];
  for (const a of d.attempts) {
    events.push({
      at: a.at, kind: "bad", text: `round ${a.round} did not settle`,
      detail: `${a.error}${a.next_retry ? ` — next attempt ${fmtTime(a.next_retry)}` : ""}`,
    });
  }
  d.branches.forEach((b, i) => {
    const times = d.branch_times[i] || {};
    if (b.status !== "prepared" && times.finish_ms) {
      events.push({
        at: times.finish_ms, kind: b.status === "succeed" ? "ok" : "bad",
        text: `${b.op} of branch ${b.branch_id}: ${b.status}`, detail: b.url,
      });
    }
  });
  if (d.submit_ms) events.push({ at: d.submit_ms, kind: "ok", text: "submitted" });
  if (d.rollback_ms) events.push({ at: d.rollback_ms, kind: "warn", text: "rolling back", detail: t.rollback_reason });
  if (d.finish_ms) events.push({ at: d.finish_ms, kind: t.status === "succeed" ? "ok" : "bad", text: `finished: ${t.status}` });
  const cb = d.callback;
  if (cb && cb.delivered_ms) events.push({ at: cb.delivered_ms, kind: "ok", text: "outcome posted to the callback", detail: cb.url });
  else if (cb && cb.due_ms) events.push({ at: cb.due_ms, kind: cb.error ? "warn" : "", text: `outcome to be posted to the callback (${cb.attempts} tried)`, detail: cb.error || cb.url, future: cb.due_ms > d.now });
  else if (cb && cb.error) events.push({ at: d.finish_ms, kind: "bad", text: "callback given up", detail: cb.error });
  else if (t.next_cron_ms) events.push({ at: t.next_cron_ms, kind: "", text: "next attempt due", future: true });
  events.sort((a, b) => a.at - b.at);
  return el("ol", { class: "timeline", id: "timeline" }, events.map((e) => el("li", { class: e.kind },
    el("span", { class: "when", title: fmtAgo(e.at, d.now), text: fmtTime(e.at) }),
    el("span", { text: e.text }),
    e.detail ? el("span", { class: "detail", text: excerpt(e.detail, 400) }) : null)));
}

// A saga's steps as DTM orders them: a chain (each after the one before), or with
// custom_data {"orders": {"2": [0, 1]}, "concurrent": true} a DAG; each step placed in the
// column of its longest path from a first step, with the state of its action and its
// compensate.
function sagaSteps(t, branches) {
  let custom = {};
  try { custom = t.custom_data ? JSON.parse(t.custom_data) : {}; } catch (e) { custom = {}; }
  let options = {};
  try { options = t.options ? JSON.parse(t.options) : {}; } catch (e) { options = {}; }
  const concurrent = !!custom.concurrent || !!options.concurrent;
  const n = (t.steps || []).length;
  const after = [];
  for (let i = 0; i < n; i++) {
    const before = concurrent || i === 0 ? [] : [i - 1];
    for (const b of ((custom.orders || {})[String(i)] || [])) if (!before.includes(b)) before.push(b);
    after.push(before);
  }
  const depth = [];
  for (let i = 0; i < n; i++) depth.push(after[i].reduce((d, b) => Math.max(d, (depth[b] ?? 0) + 1), 0));
  const id = (i) => pad(i + 1);
  const state = (i, op) => {
    const b = branches.find((x) => x.branch_id === id(i) && x.op === op);
    return b ? b.status : "prepared";
  };
  const columns = [];
  for (let i = 0; i < n; i++) (columns[depth[i]] ||= []).push(i);
  return el("div", { class: "steps", id: "saga-steps" }, columns.map((col) => el("div", { class: "step-col" },
    col.map((i) => el("div", { class: "step card", "data-step": id(i) },
      el("div", { class: "mono step-id", text: `step ${id(i)}` }),
      el("div", {}, el("span", { class: "muted", text: "action " }), status(state(i, "action"))),
      el("div", {}, el("span", { class: "muted", text: "compensate " }), status(state(i, "compensate"))),
      after[i].length ? el("div", { class: "muted after", text: `after ${after[i].map(id).join(", ")}` }) : null)))));
}

async function act(button, what, call) {
  button.disabled = true;
  try {
    await call();
    toast(what);
  } catch (e) {
    toast(e.message, true);
  }
  await render();
}

async function renderTransaction(gid) {
  const d = await api(`/api/admin/transaction${query({ gid })}`);
  const t = d.transaction;
  const finished = t.status === "succeed" || t.status === "failed";
  const retryNow = el("button", { type: "button", id: "retry-now", class: "primary", disabled: finished, text: "Retry now" });
  retryNow.addEventListener("click", () => act(retryNow, "made due now", () =>
    api("/api/dtmsvr/resetNextCronTime", { method: "POST", body: { gid } })));
  const stop = el("button", { type: "button", id: "force-stop", class: "danger", disabled: finished, text: "Force stop" });
  stop.addEventListener("click", async () => {
    if (!(await confirmAction(`Force stop ${gid}? It ends as failed; branches still pending are not called again.`))) return;
    await act(stop, "stopped", () => api("/api/dtmsvr/forceStop", { method: "POST", body: { gid } }));
  });
  const summary = el("dl", { class: "summary" },
    el("dt", { text: "Status" }), el("dd", { id: "txn-status" }, status(t.status), t.overdue ? el("span", { class: "flag", text: "overdue" }) : null),
    el("dt", { text: "Type" }), el("dd", { text: t.trans_type }),
    el("dt", { text: "Created" }), el("dd", { text: `${fmtTime(t.create_ms)} (${fmtAgo(t.create_ms, d.now)})` }),
    el("dt", { text: "Failed rounds in a row" }), el("dd", { id: "txn-retries", text: t.retry_count }),
    el("dt", { text: finished ? "Finished" : "Next attempt" }),
    el("dd", { text: finished ? fmtTime(d.finish_ms) : t.next_cron_ms ? `${fmtTime(t.next_cron_ms)} (${fmtAgo(t.next_cron_ms, d.now)})` : "none planned" }),
    el("dt", { text: "Driven by" }), el("dd", { class: "mono", text: t.lease_expire_ms ? `${t.owner} (lease ${fmtAgo(t.lease_expire_ms, d.now)})` : "nobody" }),
    t.rollback_reason ? [el("dt", { text: "Rollback reason" }), el("dd", { text: t.rollback_reason })] : null,
    t.last_error ? [el("dt", { text: "Last error" }), el("dd", { class: "err", id: "txn-last-error", text: t.last_error })] : null);
  const branches = el("table", { id: "branches" },
    el("thead", {}, el("tr", {}, ["Branch", "Op", "Status", "URL", "Finished"].map((h) => el("th", { text: h })))),
    el("tbody", {}, d.branches.map((b, i) => el("tr", {},
      el("td", { class: "mono", text: b.branch_id }), el("td", { text: b.op }), el("td", {}, status(b.status)),
      el("td", { class: "mono", text: b.url }),
      el("td", { text: fmtTime((d.branch_times[i] || {}).finish_ms) })))));
  const messages = d.messages.length ? el("table", { id: "messages" },
    el("thead", {}, el("tr", {}, ["Step", "Topic", "Key", "Seq", "Status", "Attempts", "Last error", ""].map((h) => el("th", { text: h })))),
    el("tbody", {}, d.messages.map((m) => {
      let action = null;
      if (m.status === "dead") {
        action = el("button", { type: "button", class: "redrive", text: "Re-drive" });
        action.addEventListener("click", () => act(action, "re-driven", () =>
          api("/api/admin/redrive", { method: "POST", body: { gid, branch_id: m.branch_id } })));
      }
      return el("tr", {}, el("td", { class: "mono", text: m.branch_id }), el("td", { text: m.topic }),
        el("td", { class: "mono", text: m.sharding_key }), el("td", { class: "num", text: m.seq ?? "" }),
        el("td", {}, status(m.status)), el("td", { class: "num", text: m.attempts }),
        el("td", { class: "err", text: excerpt(m.last_error, 160) }), el("td", {}, action));
    }))) : el("p", { class: "muted", text: "No message." });
  main.replaceChildren(
    el("p", {}, el("a", { href: "#/", text: "« Transactions" })),
    el("h1", { class: "mono", id: "txn-gid", text: t.gid }),
    el("div", { class: "actions" }, retryNow, stop),
    ...(t.trans_type === "saga" ? [el("h2", { text: "Steps" }), sagaSteps(t, d.branches)] : []),
    el("div", { class: "grid2" },
      el("section", {}, el("div", { class: "card" }, summary), el("h2", { text: "Branches" }), branches),
      el("section", {}, el("h2", { text: "Timeline" }), el("div", { class: "card" }, timeline(d)))),
    el("h2", { text: "Messages" }), messages);
}

// ---- outbox and instances ------------------------------------------------------------

async function renderOutbox() {
  const [backlog, dead] = await Promise.all([
    api("/api/admin/backlog?limit=100"),
    api("/api/admin/outbox?status=dead&limit=100"),
  ]);
  const now = backlog.now;
  const keys = el("table", { id: "backlog" },
    el("thead", {}, el("tr", {}, ["Topic", "Key", "Undelivered", "Of which dead", "Oldest"].map((h) => el("th", { text: h })))),
    el("tbody", {}, backlog.keys.length ? backlog.keys.map((k) => el("tr", {},
      el("td", { text: k.topic }), el("td", { class: "mono", text: k.sharding_key || "(none)" }),
      el("td", { class: "num", text: k.unsent }), el("td", { class: "num", text: k.dead }),
      el("td", { title: fmtTime(k.oldest_create_time), text: fmtAgo(k.oldest_create_time, now) })))
      : el("tr", {}, el("td", { colspan: 5, class: "muted", text: "Nothing waits: every committed message was delivered." }))));
  const deadRows = dead.messages.map((m) => {
    const b = el("button", { type: "button", class: "redrive", text: "Re-drive" });
    b.addEventListener("click", () => act(b, "re-driven", () =>
      api("/api/admin/redrive", { method: "POST", body: { gid: m.gid, branch_id: m.branch_id } })));
    return el("tr", {},
      el("td", {}, el("a", { class: "mono", href: `#/txn/${encodeURIComponent(m.gid)}`, text: m.gid })),
      el("td", { class: "mono", text: m.branch_id }), el("td", { text: m.topic }),
      el("td", { class: "mono", text: m.sharding_key }), el("td", { class: "num", text: m.refusals }),
      el("td", { class: "err", text: excerpt(m.last_error, 160) }), el("td", {}, b));
  });
  main.replaceChildren(
    el("h1", { text: "Outbox" }),
    el("p", { class: "muted", text: `${backlog.unsent} committed message(s) not yet acknowledged by their broker.` }),
    el("h2", { text: "Backlog by topic and key" }), keys,
    el("h2", { text: "Dead letters" }),
    deadRows.length ? el("table", { id: "dead-letters" },
      el("thead", {}, el("tr", {}, ["Transaction", "Step", "Topic", "Key", "Refusals", "Last error", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, deadRows)) : el("p", { class: "muted", text: "No dead letter." }));
}

async function renderInstances() {
  const d = await api("/api/admin/instances");
  const rows = d.instances.map((i) => el("tr", { class: "instance-row", "data-id": i.id },
    el("td", { class: "mono" }, i.id, i.id === d.me ? el("span", { class: "muted", text: " (this one)" }) : null),
    el("td", { class: "mono", text: i.address }), el("td", { text: i.version }),
    el("td", { title: fmtTime(i.started_time), text: i.started_time ? fmtAgo(i.started_time, d.now) : "" }),
    el("td", {}, i.seen_time ? fmtAgo(i.seen_time, d.now) : "never reported",
      i.seen_time && d.now - i.seen_time > 15000 ? el("span", { class: "flag", text: "silent" }) : null),
    el("td", { class: "num", text: i.transactions }), el("td", { class: "num", text: i.messages })));
  main.replaceChildren(
    el("h1", { text: "Instances" }),
    el("p", { class: "muted", text: "Coordinators sharing this database, and the leases each holds now." }),
    el("table", { id: "instances" },
      el("thead", {}, el("tr", {}, ["Instance", "Address", "Version", "Started", "Last seen", "Transactions", "Messages"]
        .map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)));
}

// ---- topics --------------------------------------------------------------------------

async function renderTopics() {
  const d = await api("/api/dtmsvr/scanKV?cat=topics&limit=1000");
  const topics = d.kv.slice().sort((a, b) => a.k.localeCompare(b.k));
  const rows = topics.flatMap((kv) => {
    let subscribers = [];
    try { subscribers = JSON.parse(kv.v); } catch (e) { subscribers = []; }
    const remove = el("button", { type: "button", class: "danger delete-topic", text: "Delete topic" });
    remove.addEventListener("click", async () => {
      if (!(await confirmAction(`Delete topic ${kv.k} and its ${subscribers.length} subscriber(s)? Messages sent to it later are refused.`))) return;
      await act(remove, "deleted", () => api(`/api/dtmsvr/topic/${encodeURIComponent(kv.k)}`, { method: "DELETE" }));
    });
    const head = el("tr", { class: "topic-row", "data-topic": kv.k },
      el("td", { class: "mono", text: kv.k }), el("td", { class: "num", text: subscribers.length }),
      el("td", { class: "muted", text: `version ${kv.version}, changed ${kv.update_time}` }), el("td", {}, remove));
    return [head, ...subscribers.map((sub) => {
      const drop = el("button", { type: "button", class: "unsubscribe", text: "Unsubscribe" });
      drop.addEventListener("click", () => act(drop, "unsubscribed", () =>
        api(`/api/dtmsvr/unsubscribe${query({ topic: kv.k, url: sub.url })}`)));
      return el("tr", { class: "subscriber-row", "data-topic": kv.k },
        el("td", {}), el("td", { class: "mono", colspan: 2, text: sub.remark ? `${sub.url} (${sub.remark})` : sub.url }),
        el("td", {}, drop));
    })];
  });
  const form = el("form", { class: "filters", id: "subscribe-form" },
    el("label", {}, "Topic", el("input", { id: "subscribe-topic", required: true })),
    el("label", {}, "Subscriber URL", el("input", { id: "subscribe-url", required: true, size: 48 })),
    el("label", {}, "Remark", el("input", { id: "subscribe-remark" })),
    el("button", { type: "submit", class: "primary", id: "subscribe", text: "Subscribe" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const button = document.getElementById("subscribe");
    const value = (id) => document.getElementById(id).value.trim();
    act(button, "subscribed", () => api(`/api/dtmsvr/subscribe${query({
      topic: value("subscribe-topic"), url: value("subscribe-url"), remark: value("subscribe-remark"),
    })}`));
  });
  main.replaceChildren(
    el("h1", { text: "Topics" }),
    el("p", { class: "muted", text: "A msg step to topic://NAME goes to every subscriber the store holds when the msg is saved." }),
    form,
    el("table", { id: "topics" },
      el("thead", {}, el("tr", {}, ["Topic", "Subscribers", "", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No topic." })))));
}

render();
