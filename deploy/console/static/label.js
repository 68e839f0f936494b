// The label queue: keyboard labelling with the next samples preloaded, so that labelling never waits.
// Labels are sent in the background (optimistic: the next sample is shown at once); a failed one is shown
// and its sample comes back. window.__labelTimings holds key press -> next sample painted, in ms.
"use strict";

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$/;
const Q = {queue: [], after: 0, current: null, history: [], correcting: null, classes: [], fetching: null,
           filters: {}, done: 0, exhausted: false};
window.__labelTimings = [];

function $(id) { return document.getElementById(id); }

function preload(s) {
  if (s._ready) return s._ready;
  s._img = new Image();
  s._img.src = s.image_url;
  s._ready = s._img.decode().then(() => true, () => false);
  return s._ready;
}

async function fetchMore() {
  if (Q.fetching || Q.exhausted) return Q.fetching;
  const params = new URLSearchParams({after: Q.after, limit: 50, ...Q.filters});
  Q.fetching = fetch("/api/queue?" + params, {credentials: "same-origin"}).then(async r => {
    if (!r.ok) { status(`cannot load the queue: ${r.status}`, true); return; }
    const rows = await r.json();
    if (rows.length < 50) Q.exhausted = true;
    if (rows.length) Q.after = rows[rows.length - 1].rowid;
    Q.queue.push(...rows);
    Q.queue.slice(0, 4).forEach(preload);
  }).finally(() => { Q.fetching = null; });
  return Q.fetching;
}

function status(text, bad) { const el = $("status"); el.textContent = text; el.classList.toggle("bad", !!bad); }

function renderKeys() {
  const keys = $("keys");
  keys.textContent = "";
  Q.classes.forEach((c, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.label = c;
    b.innerHTML = i < 9 ? `<kbd>${i + 1}</kbd> ` : "";
    b.appendChild(document.createTextNode(c));
    b.addEventListener("click", () => label(c, false, performance.now()));
    keys.appendChild(b);
  });
  const n = document.createElement("button");
  n.type = "button";
  n.id = "new-class";
  n.innerHTML = "<kbd>n</kbd> new class…";
  n.addEventListener("click", openNewClass);
  keys.appendChild(n);
}

function draw(s) {
  const img = s._img, roiC = $("roi"), frameC = $("frame");
  const w = img.naturalWidth, h = img.naturalHeight;
  const isFrame = w === s.width && h === s.height;  // a whole-frame upload (else the edge sent the ROI crop)
  const roi = isFrame ? (s.roi || s.model_roi) : null;
  const [x, y, rw, rh] = roi || [0, 0, w, h];
  const scale = Math.max(1, Math.floor(320 / Math.max(rw, rh)));
  roiC.width = rw * scale; roiC.height = rh * scale;
  const rc = roiC.getContext("2d");
  rc.imageSmoothingEnabled = false;  // full resolution: every pixel visible, none invented
  rc.drawImage(img, x, y, rw, rh, 0, 0, rw * scale, rh * scale);
  const note = $("frame-note");
  if (!isFrame) {
    frameC.width = 0; frameC.height = 0;
    note.textContent = "whole frame not uploaded: the edge sends only the ROI crop (edge config upload.crop_roi)";
  } else {
    const fs = Math.min(1, 480 / w);
    frameC.width = Math.round(w * fs); frameC.height = Math.round(h * fs);
    const fc = frameC.getContext("2d");
    fc.drawImage(img, 0, 0, frameC.width, frameC.height);
    if (roi) { fc.strokeStyle = "#ff3b30"; fc.lineWidth = 2; fc.strokeRect(x * fs, y * fs, rw * fs, rh * fs); }
    note.textContent = roi ? `whole frame ${w}×${h}, ROI boxed` : `whole frame ${w}×${h} (no ROI)`;
  }
}

function describe(s) {
  const [top, p] = s.prediction && s.prediction.length ? s.prediction[0] : ["?", 0];
  $("sample-id").textContent = s.id;
  $("pred").textContent = top;
  $("conf").textContent = `confidence ${p.toFixed(3)}` + (s.prediction.length > 1 ?
    ` · then ${s.prediction.slice(1, 3).map(([n, q]) => `${n} ${q.toFixed(2)}`).join(", ")}` : "");
  $("reason").textContent = s.reason;
  $("pselect").textContent = s.p_select.toFixed(3);
  $("unc").textContent = `${s.uncertainty_kind} ${s.uncertainty.toFixed(3)}`;
  $("device").textContent = `${s.device} · model ${s.model_version} · frame ${s.width}×${s.height}`;
  const c = $("correcting");
  c.hidden = !Q.correcting;
  if (Q.correcting) c.textContent = `correcting: labelled "${Q.correcting}" — press a class key to replace it, s to keep it`;
  document.querySelectorAll("#keys button[data-label]").forEach(b => b.classList.toggle("top", b.dataset.label === top));
}

async function show(s, t0) {
  Q.current = s;
  $("empty").hidden = !!s;
  $("labeller").classList.toggle("idle", !s);
  if (!s) { $("sample-id").textContent = "-"; return; }
  await preload(s);
  if (Q.current !== s) return;
  draw(s);
  describe(s);
  Q.queue.slice(0, 3).forEach(preload);
  if (t0 !== undefined) {
    requestAnimationFrame(() => requestAnimationFrame(() => window.__labelTimings.push(performance.now() - t0)));
  }
}

async function advance(t0) {
  if (Q.queue.length < 10) fetchMore();
  if (!Q.queue.length) { await fetchMore(); }
  return show(Q.queue.shift() || null, t0);
}

async function label(name, newClass, t0) {
  const s = Q.current;
  if (!s) return;
  const relabel = Q.correcting !== null;
  Q.correcting = null;
  Q.history.push({sample: s, label: name});
  if (Q.history.length > 50) Q.history.shift();
  const shown = advance(t0);
  const r = await EL.post(`/api/samples/${encodeURIComponent(s.id)}/label`, {label: name, new_class: !!newClass, relabel});
  if (r.ok) {
    Q.done += relabel ? 0 : 1;
    $("done").textContent = Q.done;
    const w = $("waiting");
    if (!relabel) w.textContent = Math.max(0, Number(w.textContent) - 1);
    status(`${s.id}: ${r.data.label}` + (r.data.previous ? ` (was ${r.data.previous})` : ""));
    if (newClass) await refreshClasses();
  } else {
    Q.history = Q.history.filter(h => h.sample !== s);
    status(`${s.id} not labelled: ${r.data.detail || r.data.error || r.status}`, true);
    if (r.status !== 409) { await shown; Q.queue.unshift(s); }  // it comes back next
  }
}

async function refreshClasses() {
  const r = await fetch("/api/classes", {credentials: "same-origin"});
  if (r.ok) { Q.classes = (await r.json()).known; renderKeys(); if (Q.current) describe(Q.current); }
}

function undo() {
  const h = Q.history.pop();
  if (!h) { status("nothing to undo"); return; }
  if (Q.current) Q.queue.unshift(Q.current);
  Q.correcting = h.label;
  show(h.sample);
}

function skip(t0) {
  if (Q.correcting !== null) { Q.correcting = null; status("label kept"); }
  advance(t0);
}

function openNewClass() {
  if (!Q.current) return;
  const dlg = $("newclass"), input = $("newclass-name"), ok = $("newclass-ok"), check = $("newclass-check");
  input.value = "";
  check.textContent = "";
  ok.disabled = true;
  input.oninput = () => {
    const v = input.value.trim();
    const same = Q.classes.find(c => c.toLowerCase() === v.toLowerCase());
    check.textContent = !v ? "" : same ? `"${same}" exists already: use its key` :
      NAME_RE.test(v) ? `creates class "${v}" (class ${Q.classes.length + 1})` :
      "1-64 letters, digits, '.', '_', '-' or spaces, starting with a letter or digit";
    ok.disabled = !v || !!same || !NAME_RE.test(v);
  };
  dlg.returnValue = "";
  dlg.showModal();
  input.focus();
  dlg.addEventListener("close", () => {
    if (dlg.returnValue === "yes" && !ok.disabled) label(input.value.trim(), true, performance.now());
  }, {once: true});
}

document.addEventListener("keydown", ev => {
  if (document.querySelector("dialog[open]") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) return;
  const t0 = performance.now();
  if (/^[1-9]$/.test(ev.key)) {
    const c = Q.classes[Number(ev.key) - 1];
    if (c !== undefined) { ev.preventDefault(); label(c, false, t0); }
  } else if (ev.key === "s") { ev.preventDefault(); skip(t0); }
  else if (ev.key === "u") { ev.preventDefault(); undo(); }
  else if (ev.key === "n") { ev.preventDefault(); openNewClass(); }
});

document.addEventListener("DOMContentLoaded", () => {
  Q.classes = JSON.parse($("labeller").dataset.classes || "[]");
  renderKeys();
  $("filters").addEventListener("change", ev => {
    const fd = new FormData($("filters"));
    Q.filters = Object.fromEntries([...fd.entries()].filter(([, v]) => v));
    Object.assign(Q, {queue: [], after: 0, exhausted: false, correcting: null});
    ev.target.blur();
    advance();
  });
  advance().then(() => { document.body.dataset.ready = "1"; });
});
