// pgqueue dashboard. Plain ES modules, no framework: fetch the REST API with the user's token, stay live on
// the server-sent events of /api/v1/events (read with fetch so the token travels in a header, not the URL).

import { histogram, legend, lineChart, stackedBars } from "/static/charts.js";

const API = "/api/v1";
const COLOURS = { succeeded: "#15803d", failed: "#d97706", dead: "#b91c1c", queued: "#3557d4", running: "#2563eb", scheduled: "#7c3aed" };
const state = { token: localStorage.getItem("pgqueue.token") || "", scopes: [], range: 3600, snapshot: null,
  jobsCursor: null, deadCursor: null, selectedDead: new Set(), openJob: null, lastJobsRefresh: 0, lastDeadCount: null };

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

// -- talking to the API ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) { super(body?.message || `HTTP ${status}`); this.status = status; this.body = body; }
}

function headers(extra = {}) {
  return state.token ? { Authorization: `Bearer ${state.token}`, ...extra } : extra;
}

async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(API + path, { method, headers: headers(body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined });
  const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    if (response.status === 401) askToken();
    throw new ApiError(response.status, data);
  }
  return data;
}

function toast(message, error = false) {
  const node = $("#toast");
  node.textContent = message;
  node.className = error ? "toast error" : "toast";
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.hidden = true; }, error ? 6000 : 2500);
}

async function act(promise, done) {
  try { const result = await promise; if (done) toast(typeof done === "function" ? done(result) : done); return result; }
  catch (err) { toast(err.message, true); return null; }
}

// -- formatting ---------------------------------------------------------------------------------------------------

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (n) => (n ?? 0).toLocaleString();
function age(seconds) {
  if (seconds == null) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} m ${Math.floor(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} m`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}
const time = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const pct = (r) => (r == null ? "–" : `${(r * 100).toFixed(r < 0.1 ? 1 : 0)}%`);
const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;
const canAdmin = () => state.scopes.includes("admin");

// -- sign-in ------------------------------------------------------------------------------------------------------

function askToken() {
  const dialog = $("#token-dialog");
  if (!dialog.open) { $("#token-input").value = ""; dialog.showModal(); }
}

async function whoami() {
  try {
    const me = await api("/whoami");
    state.scopes = me.scopes;
    $("#who").textContent = me.anonymous ? "read-only (localhost)" : me.scopes.join(", ");
  } catch (err) {
    state.scopes = [];
    $("#who").textContent = "no token";
    return false;
  }
  document.body.classList.toggle("readonly", !canAdmin());
  return true;
}

// -- live updates -------------------------------------------------------------------------------------------------

function setLive(on) {
  $("#live-dot").classList.toggle("on", on);
  $("#live-text").textContent = on ? "live" : "offline";
}

async function listen() {
  for (;;) {
    const abort = new AbortController();
    state.stopListening = () => abort.abort();
    try {
      const response = await fetch(`${API}/events`, { headers: headers({ Accept: "text/event-stream" }), signal: abort.signal });
      if (response.status === 401) { setLive(false); askToken(); await wake(5000); continue; }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = /^event: (.*)$/m.exec(frame)?.[1];
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (event === "snapshot" && data) onSnapshot(JSON.parse(data));
        }
      }
    } catch (err) { /* the server went away, or the token changed: connect again below */ }
    setLive(false);
    if (!abort.signal.aborted) await wake(2000);
  }
}

// Sleep, unless a new token arrives first: then listen again at once.
function wake(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    state.stopListening = () => { clearTimeout(timer); resolve(); };
  });
}


function onSnapshot(snapshot) {
  state.snapshot = snapshot;
  renderOverview(snapshot.queues);
  renderWorkers(snapshot.workers);
  document.title = snapshot.alerts_firing.length ? `(${snapshot.alerts_firing.length}) pgqueue` : "pgqueue";
  const tab = currentTab();
  const now = Date.now();
  if (tab === "jobs" && $("#jobs-live").checked && now - state.lastJobsRefresh > 2000) loadJobs(false);
  const dead = snapshot.queues.reduce((a, q) => a + q.dead, 0);
  if (tab === "dead" && dead !== state.lastDeadCount && state.selectedDead.size === 0) loadDead(false);
  state.lastDeadCount = dead;
}

// -- overview -----------------------------------------------------------------------------------------------------

function renderOverview(queues) {
  const sum = (k) => queues.reduce((a, q) => a + (q[k] || 0), 0);
  const cards = [["Queued", sum("queued")], ["Scheduled", sum("scheduled")], ["Running", sum("running")],
    ["Succeeded / min", sum("succeeded_last_minute")], ["Failed / min", sum("failed_last_minute")], ["Dead letters", sum("dead")]];
  $("#totals").innerHTML = cards.map(([label, value]) =>
    `<div class="card"><div class="label">${label}</div><div class="value" data-total="${label}">${num(value)}</div></div>`).join("");
  const body = $("#queues tbody");
  if (!queues.length) { body.innerHTML = `<tr><td colspan="13" class="empty">No queues yet: enqueue a job.</td></tr>`; return; }
  body.innerHTML = queues.map((q) => `<tr data-queue="${esc(q.queue)}">
    <td><strong>${esc(q.queue)}</strong>${q.paused ? ' <span class="badge scheduled">paused</span>' : ""}</td>
    <td><span class="health ${q.health}" title="${esc(q.health_reason)}">${q.health}</span>${q.health === "green" ? ""
      : `<div class="reason">${esc(q.health_reason)}</div>`}</td>
    <td class="num" data-field="queued">${num(q.queued)}</td>
    <td class="num" data-field="scheduled">${num(q.scheduled)}</td>
    <td class="num" data-field="running">${num(q.running)}</td>
    <td class="num">${num(q.succeeded_last_minute)} / ${num(q.succeeded_last_hour)}</td>
    <td class="num">${num(q.failed_last_minute)} / ${num(q.failed_last_hour)}</td>
    <td class="num">${q.rate_per_second.toFixed(2)}/s</td>
    <td class="num">${pct(q.failure_rate)}</td>
    <td class="num">${age(q.oldest_queued_age)}</td>
    <td class="num" data-field="dead">${num(q.dead)}</td>
    <td class="num">${num(q.live_workers)}</td>
    <td class="admin-only">${q.paused ? `<button class="small" data-resume="${esc(q.queue)}">Resume</button>`
      : `<button class="small" data-pause="${esc(q.queue)}">Pause</button>`}</td>
  </tr>`).join("");
}

async function loadCharts() {
  const to = state.snapshot ? new Date(state.snapshot.at) : new Date();
  const from = new Date(to.getTime() - state.range * 1000);
  const range = `from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
  try {
    const [tp, outcomes, durations, depth] = await Promise.all([
      api(`/metrics/throughput?${range}`), api(`/metrics/outcomes?${range}`),
      api(`/metrics/durations?${range}`), api(`/metrics/depth?${range}`)]);
    const per = (k) => tp.points.map((p) => [new Date(p.at), p[k] / tp.step_seconds * 60]);
    lineChart($("#chart-throughput"), ["succeeded", "failed", "dead"].map((k) => ({ label: k, colour: COLOURS[k], points: per(k) })), from, to);
    legend($("#legend-throughput"), [["succeeded / min", COLOURS.succeeded], ["failed attempts / min", COLOURS.failed], ["dead / min", COLOURS.dead]]);
    stackedBars($("#chart-outcomes"), outcomes.map((o) => ({ label: o.queue, parts: [o.succeeded, o.failed, o.dead] })),
      [COLOURS.succeeded, COLOURS.failed, COLOURS.dead]);
    legend($("#legend-outcomes"), [["succeeded", COLOURS.succeeded], ["failed attempts", COLOURS.failed], ["dead", COLOURS.dead]]);
    const labels = durations.buckets.map((b) => (b.le == null ? "more" : b.le < 1 ? `${b.le * 1000}ms` : `${b.le}s`));
    const at = (p) => (p == null ? -1 : durations.buckets.findIndex((b) => b.le == null || p <= b.le));
    histogram($("#chart-durations"), durations.buckets.map((b, i) => ({ label: labels[i], count: b.count })), COLOURS.queued,
      [["p50", at(durations.p50), "#15803d"], ["p95", at(durations.p95), "#d97706"], ["p99", at(durations.p99), "#b91c1c"]]);
    const fmt = (s) => (s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`);
    legend($("#legend-durations"), [[`p50 ${fmt(durations.p50)}`, "#15803d"], [`p95 ${fmt(durations.p95)}`, "#d97706"],
      [`p99 ${fmt(durations.p99)}`, "#b91c1c"], [`${num(durations.count)} jobs`, COLOURS.queued]]);
    lineChart($("#chart-depth"), ["queued", "running", "scheduled"].map((k) => ({ label: k, colour: COLOURS[k],
      points: depth.map((p) => [new Date(p.at), p[k]]) })), from, to);
    legend($("#legend-depth"), [["queued", COLOURS.queued], ["running", COLOURS.running], ["scheduled", COLOURS.scheduled]]);
  } catch (err) { /* a missing token is asked for by api(); charts retry on the next round */ }
}

// -- jobs ---------------------------------------------------------------------------------------------------------

function query(form, extra = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (v) params.set(k, v);
  for (const [k, v] of Object.entries(extra)) if (v) params.set(k, v);
  return params.toString();
}

async function loadJobs(more) {
  state.lastJobsRefresh = Date.now();
  const page = await act(api(`/jobs?${query($("#jobs-filter"), { cursor: more ? state.jobsCursor : "" })}`));
  if (!page) return;
  const rows = page.items.map((j) => `<tr class="clickable${state.openJob === j.id ? " selected" : ""}" data-job="${j.id}">
    <td class="num">${j.id}</td><td>${esc(j.task)}</td><td>${esc(j.queue)}</td><td>${badge(j.state)}</td>
    <td class="num">${j.attempt} / ${j.max_attempts}</td><td class="num">${j.priority}</td>
    <td>${time(j.created_at)}</td><td>${time(j.finished_at)}</td></tr>`).join("");
  const body = $("#jobs tbody");
  if (more) body.insertAdjacentHTML("beforeend", rows);
  else body.innerHTML = rows || `<tr><td colspan="8" class="empty">No jobs match.</td></tr>`;
  state.jobsCursor = page.next_cursor;
  $("#jobs-more").hidden = !page.next_cursor;
}

async function showJob(id, panel) {
  const job = await act(api(`/jobs/${id}`));
  if (!job) return;
  state.openJob = id;
  // [what, when, css class, rank]: by time, and on a tie in the order things happen to a job.
  const events = [["created", job.created_at, "", 0], ["due to run", job.scheduled_for, "", 1]];
  for (const e of job.errors) events.push([`attempt ${e.attempt} failed: ${e.error_type} (${e.kind})`, e.failed_at, "bad", 3]);
  if (job.started_at) events.push([`attempt ${job.attempt} started`, job.started_at, "", 2]);
  if (job.finished_at) events.push([job.state, job.finished_at, job.state === "succeeded" ? "good" : job.state === "dead" ? "bad" : "", 4]);
  events.sort((a, b) => new Date(a[1]) - new Date(b[1]) || a[3] - b[3]);
  panel.innerHTML = `
    <div class="toolbar"><h2 style="margin:0">Job ${job.id}</h2>${badge(job.state)}<span class="spacer"></span>
      <button class="small admin-only" data-cancel="${job.id}" ${["scheduled", "queued"].includes(job.state) ? "" : "disabled"}>Cancel</button>
      <button class="small admin-only" data-retry="${job.id}" ${["dead", "cancelled"].includes(job.state) ? "" : "disabled"}>Retry</button>
      <button class="small" data-close>Close</button></div>
    <dl><dt>Task</dt><dd>${esc(job.task)}</dd><dt>Queue</dt><dd>${esc(job.queue)}</dd>
      <dt>Attempt</dt><dd>${job.attempt} of ${job.max_attempts}</dd><dt>Priority</dt><dd>${job.priority}</dd>
      <dt>Worker</dt><dd>${esc(job.worker_id || "–")}</dd><dt>Lease until</dt><dd>${time(job.lease_expires_at)}</dd></dl>
    <h3>Arguments</h3><pre>${esc(JSON.stringify({ args: job.args, kwargs: job.kwargs }, null, 2))}</pre>
    <h3>Result</h3><pre>${esc(JSON.stringify(job.result, null, 2))}</pre>
    <h3>Timeline</h3><ul class="timeline">${events.map(([what, at, cls]) => `<li class="${cls}"><time>${time(at)}</time>${esc(what)}</li>`).join("")}</ul>
    <h3>Errors (${job.errors.length})</h3>
    ${job.errors.map((e) => `<details><summary>attempt ${e.attempt}: ${esc(e.error_type)}: ${esc(e.message)}</summary>
      <pre>${esc(e.traceback || "(no traceback)")}</pre></details>`).join("") || '<p class="muted">none</p>'}`;
  panel.hidden = false;
  panel.parentElement.classList.add("with-detail");
}

function closeDetail(panel) {
  panel.hidden = true;
  panel.parentElement.classList.remove("with-detail");
  state.openJob = null;
}

// -- dead letters -------------------------------------------------------------------------------------------------

function deadFilter() {
  const out = {};
  for (const [k, v] of new FormData($("#dead-filter"))) if (v) out[k] = v;
  return out;
}

async function loadDead(more) {
  const page = await act(api(`/dead-letters?${query($("#dead-filter"), { cursor: more ? state.deadCursor : "" })}`));
  if (!page) return;
  if (!more) state.selectedDead.clear();
  const rows = page.items.map((d) => `<tr class="clickable" data-job="${d.id}">
    <td><input type="checkbox" data-select="${d.id}"></td><td class="num">${d.id}</td><td>${esc(d.task)}</td><td>${esc(d.queue)}</td>
    <td class="num">${d.attempt} / ${d.max_attempts}</td><td>${time(d.finished_at)}</td>
    <td title="${esc(d.error_message)}">${esc(d.error_type || "")}: ${esc((d.error_message || "").slice(0, 80))}</td>
    <td class="admin-only"><button class="small" data-retry="${d.id}">Retry</button></td></tr>`).join("");
  const body = $("#dead tbody");
  if (more) body.insertAdjacentHTML("beforeend", rows);
  else body.innerHTML = rows || `<tr><td colspan="8" class="empty">No dead letters. All good.</td></tr>`;
  state.deadCursor = page.next_cursor;
  $("#dead-more").hidden = !page.next_cursor;
  syncDeadButtons();
}

function syncDeadButtons() {
  $("#dead-retry").disabled = $("#dead-delete").disabled = state.selectedDead.size === 0;
}

async function bulkDead(action, selection) {
  const what = selection.ids ? `${selection.ids.length} selected` : "every matching";
  if (action === "delete" && !confirm(`Delete ${what} dead letters for good?`)) return;
  const result = await act(api(`/dead-letters/${action}`, { method: "POST", body: selection }),
    (r) => `${action === "retry" ? "Queued again" : "Deleted"}: ${r.count} jobs`);
  if (result) loadDead(false);
}

async function exportCsv() {
  const response = await fetch(`${API}/dead-letters.csv?${query($("#dead-filter"))}`, { headers: headers() });
  if (!response.ok) { toast(`export failed: HTTP ${response.status}`, true); return; }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = "dead-letters.csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

// -- workers ------------------------------------------------------------------------------------------------------

function renderWorkers(workers) {
  const body = $("#workers tbody");
  const typing = document.activeElement;
  if (typing?.matches("input[data-concurrency]") && body.contains(typing)) return; // a concurrency being typed
  body.innerHTML = workers.map((w) => `<tr data-worker="${w.id}">
    <td>${esc(w.host)}</td><td class="num">${w.pid}</td><td>${esc((w.queues || ["*"]).join(", "))}</td>
    <td>${badge(w.drain_requested_at ? "draining" : w.state)}</td>
    <td class="num">${w.running} / ${w.concurrency}${w.requested_concurrency ? ` → ${w.requested_concurrency}` : ""}</td>
    <td class="num">${age(w.uptime_seconds)}</td><td class="num">${age(w.heartbeat_age_seconds)} ago</td>
    <td class="num">${num(w.jobs_done)}</td><td class="num">${num(w.jobs_failed)}</td>
    <td class="admin-only"><input type="number" min="1" max="10000" value="${w.requested_concurrency || w.concurrency}" data-concurrency="${w.id}">
      <button class="small" data-set-concurrency="${w.id}">Set</button></td>
    <td class="admin-only"><button class="small danger" data-drain="${w.id}" ${w.drain_requested_at ? "disabled" : ""}>Drain</button></td></tr>`).join("")
    || `<tr><td colspan="11" class="empty">No live worker. Start one: <code>pgqueue work myproject.tasks:app</code></td></tr>`;
}

// -- schedules ----------------------------------------------------------------------------------------------------

const MISSED = { once: "run the latest once", all: "run every one", skip: "skip" };

async function loadSchedules() {
  const schedules = await act(api("/schedules"));
  if (!schedules) return;
  $("#schedules tbody").innerHTML = schedules.map((s) => `<tr data-schedule="${esc(s.name)}">
    <td><strong>${esc(s.name)}</strong></td><td><code>${esc(s.cron)}</code></td><td>${esc(s.timezone)}</td>
    <td>${esc(s.task)}</td><td>${esc(s.queue)}</td>
    <td data-field="next">${s.paused ? "–" : time(s.next_tick_at)}</td><td>${time(s.last_tick_at)}</td>
    <td title="${esc(s.missed)}">${esc(MISSED[s.missed] || s.missed)}</td>
    <td data-field="state">${badge(s.paused ? "paused" : "active")}</td><td>${s.source === "code" ? "code" : "API / CLI"}</td>
    <td class="admin-only">${s.paused ? `<button class="small" data-resume-schedule="${esc(s.name)}">Resume</button>`
      : `<button class="small" data-pause-schedule="${esc(s.name)}">Pause</button>`}</td></tr>`).join("")
    || `<tr><td colspan="11" class="empty">No schedules. Declare one with <code>@app.periodic(cron=...)</code> or <code>pgqueue cron add</code>.</td></tr>`;
}

// -- alerts -------------------------------------------------------------------------------------------------------

async function loadAlerts() {
  const [rules, events] = await Promise.all([act(api("/alerts/rules")), act(api("/alerts/events?limit=100"))]);
  if (rules) {
    $("#rules tbody").innerHTML = rules.map((r) => `<tr>
      <td><strong>${esc(r.name)}</strong></td><td>${esc(r.kind)}</td><td>${esc(r.queue || "all")}</td>
      <td class="num">${r.threshold}</td><td>${badge(r.enabled ? (r.firing ? "firing" : "ok") : "disabled")}</td>
      <td class="num">${r.last_value == null ? "–" : Math.round(r.last_value * 100) / 100}</td><td>${esc(r.webhook_url)}</td>
      <td><input type="checkbox" data-enable="${r.id}" ${r.enabled ? "checked" : ""} ${canAdmin() ? "" : "disabled"}></td>
      <td class="admin-only"><button class="small danger" data-delete-rule="${r.id}">Delete</button></td></tr>`).join("")
      || `<tr><td colspan="9" class="empty">No rules yet.</td></tr>`;
  }
  if (events) {
    $("#alert-events tbody").innerHTML = events.map((e) => `<tr><td>${time(e.created_at)}</td><td>${esc(e.rule_name)}</td>
      <td>${badge(e.status)}</td><td>${esc(e.message)}</td>
      <td title="${esc(e.last_error || "")}">${badge(e.delivery)}${e.attempts == null ? ""
        : ` ${e.attempts} tr${e.attempts === 1 ? "y" : "ies"}`}</td></tr>`).join("")
      || `<tr><td colspan="5" class="empty">Nothing has fired.</td></tr>`;
  }
}

// -- tabs and wiring ----------------------------------------------------------------------------------------------

function currentTab() { return (location.hash || "#overview").slice(1); }

function showTab() {
  const tab = currentTab();
  for (const s of $$("section[data-section]")) s.hidden = s.dataset.section !== tab;
  for (const a of $$("nav a[data-tab]")) a.classList.toggle("active", a.dataset.tab === tab);
  if (tab === "jobs") loadJobs(false);
  if (tab === "dead") loadDead(false);
  if (tab === "alerts") loadAlerts();
  if (tab === "schedules") loadSchedules();
  if (tab === "overview") loadCharts();
}

function wire() {
  window.addEventListener("hashchange", showTab);
  $("#who").addEventListener("click", askToken);
  $("#token-form").addEventListener("submit", async (event) => {
    if (event.submitter?.value !== "save") return;
    state.token = $("#token-input").value.trim();
    localStorage.setItem("pgqueue.token", state.token);
    if (await whoami()) { toast("Signed in"); showTab(); state.stopListening?.(); } else toast("That token was refused", true);
  });
  $("#ranges").addEventListener("click", (event) => {
    const range = event.target.dataset?.range;
    if (!range) return;
    state.range = Number(range);
    for (const b of $$("#ranges button")) b.classList.toggle("active", b === event.target);
    loadCharts();
  });
  $("#queues").addEventListener("click", (event) => {
    const pause = event.target.dataset.pause, resume = event.target.dataset.resume;
    if (pause) act(api(`/queues/${encodeURIComponent(pause)}/pause`, { method: "POST" }), `Paused ${pause}`);
    if (resume) act(api(`/queues/${encodeURIComponent(resume)}/resume`, { method: "POST" }), `Resumed ${resume}`);
  });
  $("#jobs-filter").addEventListener("submit", (event) => { event.preventDefault(); loadJobs(false); });
  $("#jobs-more").addEventListener("click", () => loadJobs(true));
  $("#dead-filter").addEventListener("submit", (event) => { event.preventDefault(); loadDead(false); });
  $("#dead-more").addEventListener("click", () => loadDead(true));
  for (const [table, panel] of [["#jobs", "#job-detail"], ["#dead", "#dead-detail"]]) {
    $(table).addEventListener("click", async (event) => {
      const target = event.target;
      if (target.dataset.select || target.id === "dead-all") return;
      if (target.dataset.retry) {
        event.stopPropagation();
        if (await act(api(`/jobs/${target.dataset.retry}/retry`, { method: "POST" }), `Job ${target.dataset.retry} queued again`)) {
          table === "#dead" ? loadDead(false) : loadJobs(false);
        }
        return;
      }
      const row = target.closest("tr[data-job]");
      if (row) showJob(Number(row.dataset.job), $(panel));
    });
    $(panel).addEventListener("click", async (event) => {
      const d = event.target.dataset;
      if ("close" in d) closeDetail($(panel));
      if (d.cancel && await act(api(`/jobs/${d.cancel}`, { method: "DELETE" }), `Job ${d.cancel} cancelled`)) showJob(Number(d.cancel), $(panel));
      if (d.retry && await act(api(`/jobs/${d.retry}/retry`, { method: "POST" }), `Job ${d.retry} queued again`)) showJob(Number(d.retry), $(panel));
    });
  }
  $("#dead").addEventListener("change", (event) => {
    const id = Number(event.target.dataset.select);
    if (event.target.id === "dead-all") {
      for (const box of $$("#dead tbody input[data-select]")) {
        box.checked = event.target.checked;
        const n = Number(box.dataset.select);
        event.target.checked ? state.selectedDead.add(n) : state.selectedDead.delete(n);
      }
    } else if (id) {
      event.target.checked ? state.selectedDead.add(id) : state.selectedDead.delete(id);
    }
    syncDeadButtons();
  });
  $("#dead-retry").addEventListener("click", () => bulkDead("retry", { ids: [...state.selectedDead] }));
  $("#dead-delete").addEventListener("click", () => bulkDead("delete", { ids: [...state.selectedDead] }));
  $("#dead-retry-all").addEventListener("click", () => {
    const filter = deadFilter();
    bulkDead("retry", Object.keys(filter).length ? filter : { all: true });
  });
  $("#dead-csv").addEventListener("click", exportCsv);
  $("#workers").addEventListener("click", async (event) => {
    const d = event.target.dataset;
    if (d.setConcurrency) {
      event.target.blur();
      const value = Number($(`input[data-concurrency="${d.setConcurrency}"]`).value);
      await act(api(`/workers/${d.setConcurrency}/concurrency`, { method: "POST", body: { concurrency: value } }),
        `Concurrency ${value} requested; the worker applies it at its next heartbeat`);
    }
    if (d.drain && confirm("Drain this worker? It finishes its running jobs and leaves.")) {
      await act(api(`/workers/${d.drain}/drain`, { method: "POST" }), "Drain requested");
    }
  });
  $("#schedules").addEventListener("click", async (event) => {
    const pause = event.target.dataset.pauseSchedule, resume = event.target.dataset.resumeSchedule;
    const name = pause || resume;
    if (!name) return;
    if (await act(api(`/schedules/${encodeURIComponent(name)}/${pause ? "pause" : "resume"}`, { method: "POST" }),
      `${pause ? "Paused" : "Resumed"} ${name}`)) loadSchedules();
  });
  $("#rule-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { name: form.get("name"), kind: form.get("kind"), threshold: Number(form.get("threshold")),
      window_seconds: Number(form.get("window_seconds") || 300), webhook_url: form.get("webhook_url") };
    if (form.get("queue")) body.queue = form.get("queue");
    if (await act(api("/alerts/rules", { method: "POST", body }), "Rule added")) { event.target.reset(); loadAlerts(); }
  });
  $("#rules").addEventListener("change", async (event) => {
    const id = event.target.dataset.enable;
    if (id) { await act(api(`/alerts/rules/${id}`, { method: "PATCH", body: { enabled: event.target.checked } })); loadAlerts(); }
  });
  $("#rules").addEventListener("click", async (event) => {
    const id = event.target.dataset.deleteRule;
    if (id && confirm("Delete this rule? Its history stays.")) { await act(api(`/alerts/rules/${id}`, { method: "DELETE" })); loadAlerts(); }
  });
}

async function start() {
  wire();
  if (!(await whoami())) askToken();
  showTab();
  listen();
  setInterval(() => {
    if (currentTab() === "overview") loadCharts();
    if (currentTab() === "alerts") loadAlerts();
    if (currentTab() === "schedules") loadSchedules();
  }, 10000);
}

start();
