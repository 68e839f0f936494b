// edgeloop console: confirmations, live fleet and rollout updates (server-sent events), data import.
// Plain JavaScript, no build step; the label queue lives in label.js.
"use strict";

const EL = {
  csrf() { const m = document.querySelector('meta[name="csrf-token"]'); return m ? m.content : ""; },
  async post(url, body, type = "application/json") {
    const r = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": type, "X-CSRF-Token": EL.csrf()},
      body: typeof body === "string" ? body : JSON.stringify(body)});
    let data = null;
    try { data = await r.json(); } catch (e) { data = {detail: r.statusText}; }
    return {ok: r.ok, status: r.status, data};
  },
  ago(ts) {
    if (!ts) return "-";
    const d = Math.max(0, Date.now() / 1000 - ts);
    return d < 120 ? `${d.toFixed(0)}s ago` : d < 7200 ? `${(d / 60).toFixed(0)}m ago` : `${(d / 3600).toFixed(0)}h ago`;
  },
  num(v, digits) {
    if (v === null || v === undefined || typeof v === "boolean") return "-";
    return (typeof v === "number" && digits !== undefined) ? v.toFixed(digits) : String(v);
  },
  confirm(message) {
    const dlg = document.getElementById("confirm");
    dlg.querySelector(".msg").textContent = message;
    dlg.returnValue = "";
    dlg.showModal();
    return new Promise(resolve => dlg.addEventListener("close", () => resolve(dlg.returnValue === "yes"), {once: true}));
  },
  live(ok) { const d = document.getElementById("live"); if (d) d.className = "dot " + (ok ? "ok" : "bad"); },
};
window.EL = EL;

// Every form with data-confirm asks first (event delegation: rollout panels are re-rendered live).
document.addEventListener("submit", async ev => {
  const form = ev.target;
  if (!form.dataset || !form.dataset.confirm || form.dataset.confirmed) return;
  ev.preventDefault();
  if (await EL.confirm(form.dataset.confirm)) { form.dataset.confirmed = "1"; form.submit(); }
});

function fleetPage() {
  const table = document.getElementById("fleet");
  const body = table.querySelector("tbody");
  let rev = Number(table.dataset.rev || 0);
  const cells = {
    online: r => r.online ? "online" : "offline",
    version: r => r.version || "-",
    version_since: r => EL.ago(r.version_since),
    fps: r => EL.num(r.fps, 1),
    latency: r => `${EL.num(r.latency_p50_ms, 1)} / ${EL.num(r.latency_p95_ms, 1)}`,
    drift: r => EL.num(r.drift, 2),
    uploads: r => EL.num(r.uploads),
    budget_min_left: r => EL.num(r.budget_min_left, 0),
    outbox_depth: r => EL.num(r.outbox_depth),
    accuracy: r => EL.num(r.accuracy, 3),
    model_state: r => (r.model_state || "-") + (r.status_version ? " " + r.status_version : ""),
    last_seen: r => EL.ago(r.last_seen),
  };
  const keys = Object.keys(cells);
  function rowFor(r) {
    let tr = document.getElementById("dev-" + r.device);
    if (tr) return tr;
    tr = document.createElement("tr");
    tr.id = "dev-" + r.device;
    tr.dataset.device = r.device;
    const a = document.createElement("a");
    a.href = "/fleet/" + encodeURIComponent(r.device);
    a.textContent = r.device;
    const td = document.createElement("td");
    td.appendChild(a);
    tr.appendChild(td);
    for (const k of keys) { const c = document.createElement("td"); c.dataset.k = k; tr.appendChild(c); }
    const after = [...body.rows].find(x => x.dataset.device > r.device);
    body.insertBefore(tr, after || null);
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
    return tr;
  }
  function apply(r) {
    const tr = rowFor(r);
    tr.classList.toggle("off", !r.online);
    tr.dataset.lastSeen = r.last_seen || "";
    tr.dataset.since = r.version_since || "";
    for (const c of tr.querySelectorAll("td[data-k]")) {
      const text = cells[c.dataset.k](r);
      if (c.textContent !== text) { c.textContent = text; c.classList.remove("flash-cell"); void c.offsetWidth; c.classList.add("flash-cell"); }
      if (c.dataset.k === "drift") c.classList.toggle("warn", !!r.drift_active);
    }
  }
  function counts() {
    document.getElementById("n-devices").textContent = body.rows.length;
    document.getElementById("n-online").textContent = [...body.rows].filter(r => !r.classList.contains("off")).length;
  }
  const es = new EventSource("/fleet/events?rev=" + rev);
  es.onopen = () => EL.live(true);
  es.onerror = () => EL.live(false);
  es.onmessage = ev => {
    const msg = JSON.parse(ev.data);
    rev = msg.rev;
    table.dataset.rev = rev;
    msg.devices.forEach(apply);
    if (msg.devices.length) counts();
    window.__fleetUpdates = (window.__fleetUpdates || 0) + 1;
  };
  setInterval(() => {  // keep "x s ago" current between updates
    for (const tr of body.rows) {
      const ls = tr.querySelector('td[data-k="last_seen"]');
      if (ls && tr.dataset.lastSeen) ls.textContent = EL.ago(Number(tr.dataset.lastSeen));
    }
  }, 5000);
}

function rolloutsPage() {
  const panel = document.getElementById("rollout-panel");
  const id = panel.dataset.id;
  const es = new EventSource("/rollouts/events" + (id ? "?id=" + encodeURIComponent(id) : ""));
  es.onopen = () => EL.live(true);
  es.onerror = () => EL.live(false);
  es.onmessage = ev => {
    const msg = JSON.parse(ev.data);
    if (document.querySelector("dialog[open]")) return;  // never re-render under an open confirmation
    panel.innerHTML = msg.html;
    window.__rolloutUpdates = (window.__rolloutUpdates || 0) + 1;
  };
}

function dataPage() {
  const form = document.getElementById("import");
  const out = document.getElementById("import-result");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const file = document.getElementById("import-file").files[0];
    if (!file) { out.textContent = "choose a file first"; return; }
    const text = await file.text();
    const fmt = file.name.toLowerCase().endsWith(".csv") ? "csv" : "labelstudio";
    const nc = document.getElementById("import-new").checked ? "1" : "0";
    if (nc === "1" && !await EL.confirm("Labels in this file may create new classes, which ship to every camera. Continue?")) return;
    out.textContent = "importing...";
    const r = await EL.post(`/data/import?format=${fmt}&new_classes=${nc}`, text, fmt === "csv" ? "text/csv" : "application/json");
    out.textContent = JSON.stringify(r.data, null, 1);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "fleet") fleetPage();
  else if (page === "rollouts") rolloutsPage();
  else if (page === "data") dataPage();
});
