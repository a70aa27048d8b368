// The pushproxy dashboard: renders the overview the proxy streams at ./live (SSE). Every
// value goes into the page as text, never as HTML: errors and hosts come from origins.
"use strict";

const fmtInt = (n) => Number(n).toLocaleString("en-US");

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
}

// fmtAge is the time since an ISO timestamp: "42s", "3m 05s", "2h 10m", "4d 3h".
function fmtAge(iso) {
  if (!iso) return "—";
  let s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + "s";
  let m = Math.floor(s / 60);
  s %= 60;
  if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
  let h = Math.floor(m / 60);
  m %= 60;
  if (h < 24) return h + "h " + String(m).padStart(2, "0") + "m";
  return Math.floor(h / 24) + "d " + (h % 24) + "h";
}

const shortID = (id) => (id ? id.slice(0, 8) : "—");

function lookup(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function formatTotal(el, v) {
  delete el.dataset.age;
  switch (el.dataset.format) {
    case "bytes":
      return fmtBytes(v ?? 0);
    case "age":
      if (v) el.dataset.age = v;
      return fmtAge(v);
    case "counts": {
      const parts = Object.entries(v || {}).sort().map(([k, n]) => k + " " + fmtInt(n));
      return parts.length ? parts.join(" · ") : "none";
    }
    default:
      return fmtInt(v ?? 0);
  }
}

// td makes a cell; opts: {col, num, title, age (an ISO time shown as an age), cls}.
function td(text, opts = {}) {
  const c = document.createElement("td");
  if (opts.age !== undefined) {
    if (opts.age) c.dataset.age = opts.age;
    text = fmtAge(opts.age);
  }
  c.textContent = text;
  if (opts.col) c.dataset.col = opts.col;
  if (opts.num || opts.age !== undefined) c.className = "n";
  if (opts.title) c.title = opts.title;
  if (opts.cls) c.classList.add(opts.cls);
  return c;
}

function row(id, cells) {
  const tr = document.createElement("tr");
  if (id) tr.dataset.id = id;
  tr.append(...cells);
  return tr;
}

function fill(tableID, rows, build) {
  const table = document.getElementById(tableID);
  table.tBodies[0].replaceChildren(...rows.map(build));
  table.closest("section").classList.toggle("is-empty", rows.length === 0);
}

// The header of the stream tables (largest and oldest backlogs), which share their columns.
const streamColumns = ["Stream", "Origin", "State", "Events|n", "Bytes|n", "Oldest unread|n"];
for (const thead of document.querySelectorAll('thead[data-columns="streams"]')) {
  const tr = document.createElement("tr");
  for (const col of streamColumns) {
    const [name, cls] = col.split("|");
    const th = document.createElement("th");
    th.textContent = name;
    if (cls) th.className = cls;
    tr.append(th);
  }
  thead.append(tr);
}

const streamRow = (s) =>
  row(s.id, [
    td(shortID(s.id), { col: "id", title: s.id }),
    td(s.host, { col: "host" }),
    td(s.state, { col: "state", cls: "state-" + s.state }),
    td(fmtInt(s.backlog), { col: "backlog", num: true }),
    td(fmtBytes(s.backlog_bytes), { col: "backlog_bytes", num: true, title: s.backlog_bytes + " bytes" }),
    td("", { age: s.oldest_event_at }),
  ]);

function render(o) {
  for (const el of document.querySelectorAll("[data-total]")) {
    const v = lookup(o.totals, el.dataset.total);
    el.dataset.value = typeof v === "object" ? JSON.stringify(v) : String(v ?? "");
    el.textContent = formatTotal(el, v);
  }
  fill("largest", o.largest_backlogs, streamRow);
  fill("oldest", o.oldest_backlogs, streamRow);
  fill("origins", o.failing_origins, (g) =>
    row(g.host, [
      td(g.host, { col: "host" }),
      td(fmtInt(g.held), { col: "held", num: true }),
      td(fmtInt(g.disconnected), { col: "disconnected", num: true }),
      td(fmtInt(g.failed), { col: "failed", num: true }),
      td(g.last_error || "", { col: "last_error", cls: "error" }),
      td("", { age: g.last_error_at }),
    ]),
  );
  fill("dead", o.dead_devices, (d) =>
    row(d.id, [
      td(shortID(d.id), { col: "id", title: d.id }),
      td(d.platform, { col: "platform" }),
      td(d.dead_reason || "", { col: "dead_reason", cls: "error" }),
      td(fmtInt(d.held_streams), { col: "held_streams", num: true }),
      td(fmtInt(d.backlog), { col: "backlog", num: true }),
      td("", { age: d.dead_at }),
    ]),
  );
  fill("wakeups", o.recent_wakeups, (w) =>
    row(w.id, [
      td(shortID(w.device_id), { col: "device_id", title: w.device_id }),
      td(w.platform, { col: "platform" }),
      td(w.state, { col: "state" }),
      td(w.outcome || "—", { col: "outcome", cls: "outcome-" + (w.outcome || "none") }),
      td(fmtInt(w.pending_events), { col: "pending_events", num: true }),
      td(w.error || "", { col: "error", cls: "error" }),
      td("", { age: w.finished_at || w.created_at }),
    ]),
  );
  const up = document.getElementById("updated");
  up.textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
}

function setStatus(state, text) {
  const el = document.getElementById("status");
  el.dataset.state = state;
  el.textContent = text;
}

function connect() {
  const es = new EventSource("live");
  es.onopen = () => setStatus("live", "live");
  es.addEventListener("overview", (e) => {
    setStatus("live", "live");
    render(JSON.parse(e.data));
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused (the session ended or the token changed): back to the sign-in form.
      setStatus("closed", "disconnected: reload to sign in again");
    } else {
      setStatus("reconnecting", "reconnecting…");
    }
  };
}

setInterval(() => {
  for (const el of document.querySelectorAll("[data-age]")) el.textContent = fmtAge(el.dataset.age);
}, 1000);

connect();
