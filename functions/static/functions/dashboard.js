/* The live dashboard: starts from the server-rendered snapshot, then follows the websocket
   (ws/dashboard/): a snapshot on every (re)connect, coalesced updates after that.
   Reconnects with exponential back-off; asks for a snapshot when no update came for a while
   (no dispatcher running), so the page never silently goes stale. */
(function () {
  "use strict";

  const STATUSES = ["QUEUED", "RUNNING", "COMPLETED", "FAILED"];
  const CHART_SECONDS = 300; // matches dashboard.CHART_SECONDS
  const RATE_SECONDS = 10;
  const STALE_AFTER_MS = 5000; // silence before asking the server for a snapshot
  const BACKOFF_INITIAL_MS = 500;
  const BACKOFF_MAX_MS = 15000;

  const root = document.getElementById("faas-dashboard");
  if (!root) return;
  const byId = (id) => document.getElementById(id);
  const taskUrl = (id) => root.dataset.taskUrl.replace("00000000-0000-0000-0000-000000000000", id);

  const state = {
    counts: {}, queue: {}, tasks: [], shown: new Map(), history: new Map(), workers: new Map(),
    perSecond: new Map(), clockOffset: 0, socket: null, backoff: BACKOFF_INITIAL_MS,
    retryAt: 0, lastMessage: 0, lastUpdate: 0, lastAsk: 0,
  };

  const serverNow = () => Date.now() / 1000 + state.clockOffset;

  // --- applying what the server sends ------------------------------------------------------

  function applySnapshot(msg) {
    state.clockOffset = msg.at - Date.now() / 1000; // the web server's clock, as the chart's
    state.perSecond.clear();
    state.workers = new Map(msg.workers.map((w) => [w.identity, w]));
    applySummary(msg, {});
    renderWorkers();
  }

  function applyUpdate(msg) {
    state.lastUpdate = Date.now();
    for (const [identity, change] of Object.entries(msg.workers || {})) {
      state.workers.set(identity, Object.assign({ identity }, state.workers.get(identity), change));
    }
    const changes = msg.tasks || {};
    if (msg.summary) {
      applySummary(msg.summary, changes);
    } else {
      state.tasks = state.tasks.map((t) => (changes[t.id] ? Object.assign({}, t, { status: changes[t.id] }) : t));
      state.tasks.forEach((t) => noteStatus(t.id, t.status));
      renderTasks();
    }
    renderWorkers();
  }

  /* Deltas are older than the summary read after them: note them first, then the summary. */
  function applySummary(summary, changes) {
    state.counts = summary.counts;
    state.queue = summary.queue;
    mergeSeries(summary.throughput);
    const listed = new Set(summary.latest.map((t) => t.id));
    for (const [id, status] of Object.entries(changes)) if (listed.has(id)) noteStatus(id, status);
    summary.latest.forEach((t) => noteStatus(t.id, t.status));
    for (const id of state.history.keys()) if (!listed.has(id)) state.history.delete(id);
    state.tasks = summary.latest;
    renderCounts();
    renderTasks();
    renderChart();
  }

  function noteStatus(id, status) {
    const seen = state.history.get(id) || [];
    if (seen[seen.length - 1] !== status) seen.push(status);
    state.history.set(id, seen);
  }

  function mergeSeries(series) {
    const first = series.end - series.counts.length + 1;
    series.counts.forEach((n, i) => state.perSecond.set(first + i, n));
    const oldest = Math.floor(serverNow()) - CHART_SECONDS - 5;
    for (const sec of state.perSecond.keys()) if (sec < oldest) state.perSecond.delete(sec);
  }

  // --- rendering ---------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => (k === "className" ? (node.className = v) : node.setAttribute(k, v)));
    children.forEach((c) => node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c))));
    return node;
  }

  const statusPill = (status) => el("span", { className: `faas-status faas-status-${status.toLowerCase()}` }, status);
  const clock = (sec) => (sec ? new Date(sec * 1000).toLocaleTimeString([], { hour12: false }) : "");

  function ago(sec) {
    if (!sec) return "never";
    const s = Math.max(0, Math.round(serverNow() - sec));
    return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
  }

  function renderCounts() {
    let total = 0;
    STATUSES.forEach((s) => {
      const n = state.counts[s] || 0;
      total += n;
      byId(`faas-count-${s}`).textContent = n;
    });
    byId("faas-count-total").textContent = total;
    byId("faas-queue-waiting").textContent = state.queue.waiting ?? 0;
    byId("faas-queue-in-flight").textContent = state.queue.in_flight ?? 0;
  }

  function taskRow(t) {
    const runTime = t.started_at && t.finished_at ? `${(t.finished_at - t.started_at).toFixed(2)} s` : "";
    const row = el("tr", { "data-task-id": t.id, "data-status": t.status },
      el("td", {}, el("a", { href: taskUrl(t.id), title: t.id }, el("code", {}, t.id.slice(0, 8)))),
      el("td", {}, t.function),
      el("td", {}, statusPill(t.status)),
      el("td", { className: "faas-quiet" }, (state.history.get(t.id) || [t.status]).join(" \u2192 ")),
      el("td", {}, t.worker),
      el("td", {}, clock(t.created_at)),
      el("td", {}, runTime),
      el("td", { className: "faas-error", title: t.error }, t.error));
    const before = state.shown.get(t.id);
    if (before !== t.status) row.classList.add(before === undefined ? "faas-new" : "faas-changed");
    return row;
  }

  function renderTasks() {
    const body = byId("faas-tasks");
    const rows = state.tasks.map(taskRow);
    if (!rows.length) rows.push(el("tr", { className: "faas-empty" }, el("td", { colspan: 8 }, "No tasks yet.")));
    body.replaceChildren(...rows);
    state.shown = new Map(state.tasks.map((t) => [t.id, t.status]));
  }

  function workerState(w) {
    if (!w.alive) return ["dead", "faas-status-failed"];
    if (w.draining) return ["draining", "faas-status-queued"];
    return ["alive", "faas-status-completed"];
  }

  function renderWorkers() {
    const workers = [...state.workers.values()].sort((a, b) => (b.alive - a.alive) || a.identity.localeCompare(b.identity));
    const rows = workers.map((w) => {
      const [label, cls] = workerState(w);
      const busy = el("span", { className: "faas-busy" }, el("span", {
        className: "faas-busy-bar", style: `width: ${w.processes ? Math.round((100 * (w.busy || 0)) / w.processes) : 0}%`,
      }));
      return el("tr", { "data-identity": w.identity, "data-alive": String(!!w.alive) },
        el("td", {}, el("code", {}, w.identity)), el("td", {}, w.mode), el("td", {}, `${w.hostname || ""} (${w.pid ?? ""})`),
        el("td", {}, w.processes), el("td", {}, busy, ` ${w.busy || 0}`), el("td", {}, w.tasks_done ?? ""),
        el("td", { "data-heartbeat": w.last_heartbeat || "" }, ago(w.last_heartbeat)),
        el("td", {}, el("span", { className: `faas-status ${cls}` }, label)));
    });
    if (!rows.length) rows.push(el("tr", { className: "faas-empty" }, el("td", { colspan: 8 }, "No workers have registered.")));
    byId("faas-workers").replaceChildren(...rows);
  }

  function renderChart() {
    const end = Math.floor(serverNow());
    const counts = [];
    for (let sec = end - CHART_SECONDS + 1; sec <= end; sec++) counts.push(state.perSecond.get(sec) || 0);
    const recent = counts.slice(-RATE_SECONDS - 1, -1); // whole seconds only
    byId("faas-rate").textContent = (recent.reduce((a, b) => a + b, 0) / RATE_SECONDS).toFixed(1);
    byId("faas-peak").textContent = `(peak ${Math.max(0, ...counts)}/s)`;
    if (window.FaasChart) window.FaasChart.draw(byId("faas-chart"), counts);
  }

  function renderConnection() {
    const badge = byId("faas-connection");
    const open = state.socket && state.socket.readyState === WebSocket.OPEN;
    const quiet = Date.now() - state.lastUpdate;
    let label = "live";
    let kind = "live";
    if (!open) {
      const wait = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      [label, kind] = state.retryAt ? [`disconnected, retrying in ${wait} s`, "down"] : ["connecting\u2026", "connecting"];
    } else if (quiet > STALE_AFTER_MS) {
      [label, kind] = ["connected, no dispatcher is publishing", "idle"];
    }
    badge.textContent = label;
    badge.className = `faas-badge faas-badge-${kind}`;
    const updated = state.lastUpdate ? `last dispatcher update ${Math.round(quiet / 1000)} s ago` : "";
    byId("faas-updated").textContent = open ? updated : "";
  }

  // --- the connection ----------------------------------------------------------------------

  function connect() {
    state.retryAt = 0;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + root.dataset.wsPath);
    state.socket = socket;
    socket.onopen = () => {
      state.backoff = BACKOFF_INITIAL_MS;
      state.lastUpdate = Date.now(); // a running dispatcher speaks within seconds; give it that long
      renderConnection();
    };
    socket.onmessage = (event) => {
      state.lastMessage = Date.now();
      const msg = JSON.parse(event.data);
      if (msg.type === "snapshot") applySnapshot(msg);
      else if (msg.type === "dashboard.update") applyUpdate(msg);
      renderConnection();
    };
    socket.onclose = () => {
      if (state.socket !== socket) return;
      state.socket = null;
      const delay = state.backoff * (0.75 + Math.random() * 0.5); // jitter: pages do not reconnect in step
      state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
      state.retryAt = Date.now() + delay;
      setTimeout(connect, delay);
      renderConnection();
    };
  }

  function tick() {
    const socket = state.socket;
    const now = Date.now();
    if (socket && socket.readyState === WebSocket.OPEN && now - state.lastMessage > STALE_AFTER_MS &&
        now - state.lastAsk > STALE_AFTER_MS) {
      state.lastAsk = now;
      socket.send(JSON.stringify({ type: "snapshot" }));
    }
    renderChart();
    renderConnection();
    document.querySelectorAll("#faas-workers td[data-heartbeat]").forEach((td) => {
      td.textContent = ago(parseFloat(td.dataset.heartbeat) || 0);
    });
  }

  applySnapshot(JSON.parse(byId("faas-snapshot").textContent));
  connect();
  setInterval(tick, 1000);
  window.addEventListener("resize", renderChart);
})();
