// comfyfleet dashboard: plain JavaScript, no build step. Live from the SSE stream /v1/events,
// read with fetch (not EventSource) so that an API key can go along as a Bearer header.
"use strict";

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const STATES = ["SUBMITTED", "QUEUED", "ASSIGNED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"];
const state = { jobs: new Map(), agents: [], detail: null, agentTimer: null, blobs: new Map() };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const apiKey = () => localStorage.getItem("comfyfleet.apiKey") || "";

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (apiKey()) h.Authorization = `Bearer ${apiKey()}`;
  return h;
}

// An image from the API: a plain URL without a key; with one, fetched with the header.
function image(attrs, url) {
  if (!apiKey()) return el("img", { ...attrs, src: url });
  const img = el("img", attrs);
  const known = state.blobs.get(url);
  if (known) { img.src = known; return img; }
  fetch(url, { headers: headers({ Accept: "image/*" }) }).then((r) => r.ok ? r.blob() : null).then((b) => {
    if (!b) return;
    const obj = URL.createObjectURL(b);
    if (state.blobs.size > 300) state.blobs.clear();
    state.blobs.set(url, obj);
    img.src = obj;
  });
  return img;
}

async function api(method, path, body, extra = {}) {
  const opts = { method, headers: headers(extra) };
  if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = data.error || {};
    throw new Error(`${err.field ? err.field + ": " : ""}${err.message || resp.statusText}`);
  }
  return data;
}

function say(text, isError = true) {
  const m = $("#message");
  m.textContent = text;
  m.style.color = isError ? "var(--warn)" : "var(--ok)";
}

const gb = (mb) => `${(mb / 1024).toFixed(1)} GB`;
function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? `${s.toFixed(0)} s` : s < 5400 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
}

// ------------------------------------------------------------------ fleet

function vramBar(g) {
  const total = Math.max(1, g.vram_total_mb);
  const used = Math.min(total, g.vram_used_mb || 0);
  const reserved = Math.min(total - used, Math.max(0, (g.vram_reserved_mb || 0) - used));
  const pct = (v) => `${(100 * v / total).toFixed(2)}%`;
  return el("div", { class: "vram", title: `used ${gb(used)}, reserved ${gb(g.vram_reserved_mb || 0)}, free ${gb(g.vram_free_mb)} of ${gb(total)}` },
    el("div", { class: "used", style: `width:${pct(used)}` }),
    el("div", { class: "reserved", style: `width:${pct(reserved)}` }),
    el("div", { class: "free" }));
}

function renderAgents() {
  const box = $("#agents");
  box.replaceChildren();
  if (!state.agents.length) { box.append(el("p", { class: "empty" }, "no agents yet")); return; }
  for (const a of state.agents) {
    const host = a.host || {};
    const ramUsed = (host.ram_total_mb || 0) - (host.ram_available_mb || 0);
    const drain = el("button", { class: "drain", disabled: a.status !== "ONLINE",
      onclick: async (ev) => { ev.stopPropagation();
        try { await api("POST", `/v1/agents/${encodeURIComponent(a.id)}/drain`); say(`draining ${a.id}`, false); refreshAgents(); }
        catch (e) { say(e.message); } } }, "drain");
    box.append(el("div", { class: "agent", "data-agent": a.id, "data-status": a.status },
      el("div", { class: "top" }, el("span", { class: "name" }, a.id),
        el("span", { class: `badge ${a.status}` }, a.status), el("span", { class: "meta" }, `seen ${ago(a.last_seen)} ago`),
        el("span", { style: "margin-left:auto" }, drain)),
      el("div", { class: "meta" },
        `CPU ${host.cpu_count || "?"} cores, load ${(host.load_1m || 0).toFixed(2)} · RAM ${gb(ramUsed)} / ${gb(host.ram_total_mb || 0)} · jobs ${a.jobs.length}`,
        ` · ComfyUI ${a.instances.filter((i) => i.healthy).length}/${a.instances.length} healthy`),
      a.gpus.map((g) => el("div", { class: "gpu" },
        `GPU ${g.index} ${g.name}: used ${gb(g.vram_used_mb)}, reserved ${gb(g.vram_reserved_mb || 0)}, free ${gb(g.vram_free_mb)} of ${gb(g.vram_total_mb)}`,
        vramBar(g))),
      a.instances.filter((i) => i.kind && i.kind !== "external").map(instanceLine)));
  }
  box.append(el("div", { class: "meta legend" }, el("i", { style: "background:var(--warn)" }), "used",
    el("i", { style: "background:var(--res)" }), "reserved", el("i", { style: "background:#23303c" }), "free"));
}

// a ComfyUI the agent runs (process or docker): its state, uptime and restarts
function instanceLine(i) {
  const counts = Object.values(i.restart_counts || {}).reduce((n, c) => n + c, 0);
  const last = (i.restarts || []).slice(-1)[0];
  return el("div", { class: "instance meta", "data-instance": i.instance_id, "data-state": i.state || "" },
    `ComfyUI ${i.instance_id} (${i.kind}): ${i.state || "?"}`,
    i.state === "ready" && i.up_since ? `, up ${ago(i.up_since)}` : "",
    ` · restarts ${counts}`,
    last ? ` · last: ${last.reason} ${ago(last.at)} ago` : "");
}

async function refreshAgents() {
  try { state.agents = (await api("GET", "/v1/agents")).agents; renderAgents(); }
  catch (e) { say(`agents: ${e.message}`); }
}

function agentsSoon() {  // trailing debounce: one refresh after a burst of events
  clearTimeout(state.agentTimer);
  state.agentTimer = setTimeout(() => { state.agentTimer = null; refreshAgents(); }, 200);
}

// ------------------------------------------------------------------ jobs

function upsertJob(data) {
  const id = data.id || data.job_id;
  const job = { ...(state.jobs.get(id) || { id, progress: {}, created_at: data.at || Date.now() / 1000 }) };
  // replies and live events may cross: a job that ended stays ended (a cancel's reply saying
  // RUNNING can arrive after the CANCELLED event)
  if (TERMINAL.has(job.status) && data.status && !TERMINAL.has(data.status)) return job;
  for (const k of ["status", "attempt", "agent_id", "error", "outputs", "pending_reason", "timestamps", "cancel_requested", "created_at"]) {
    if (data[k] !== undefined) job[k] = data[k];
  }
  if (data.progress) job.progress = { ...job.progress, ...data.progress };
  if (job.status === "COMPLETED") job.progress = { ...job.progress, fraction: 1 };
  state.jobs.set(id, job);
  return job;
}

function renderCounts() {
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const j of state.jobs.values()) counts[j.status] = (counts[j.status] || 0) + 1;
  $("#queue").replaceChildren(...STATES.map((s) => el("span", { class: `badge ${s}`, "data-count": s }, `${s.toLowerCase()} `, el("b", {}, counts[s]))));
}

function jobRow(j) {
  const p = j.progress || {};
  const frac = Math.max(0, Math.min(1, p.fraction || 0));
  const step = p.max ? `${p.node_type || p.node || ""} ${p.value}/${p.max}` : (p.node_type || "");
  const shown = (j.outputs || []).find((o) => (o.content_type || "").startsWith("image/"));
  const thumb = j.status === "COMPLETED" && shown ? image({ class: "thumb output-thumb", alt: shown.name }, shown.url)
    : j.preview && !TERMINAL.has(j.status) ? image({ class: "thumb preview", alt: "preview" }, j.preview) : null;
  const cancel = TERMINAL.has(j.status) ? null : el("button", { class: "cancel", disabled: j.cancel_requested,
    onclick: async (ev) => { ev.stopPropagation();
      try { upsertJob(await api("POST", `/v1/jobs/${encodeURIComponent(j.id)}/cancel`)); renderJobs(); say(`cancel sent to ${j.id}`, false); }
      catch (e) { say(e.message); } } }, j.cancel_requested ? "cancelling" : "cancel");
  return el("tr", { class: "job", id: `job-${j.id}`, "data-status": j.status, onclick: () => openDetail(j.id) },
    el("td", { title: j.id }, j.id.slice(-12)),
    el("td", {}, el("span", { class: `badge ${j.status}`, title: j.pending_reason || "" }, j.status)),
    el("td", {}, el("span", { class: "bar", title: `${(frac * 100).toFixed(0)}%` }, el("div", { style: `width:${(frac * 100).toFixed(1)}%` })),
      el("span", { class: "step" }, j.status === "QUEUED" && j.pending_reason ? j.pending_reason : step)),
    el("td", {}, thumb), el("td", {}, j.agent_id || "–"), el("td", { class: "meta" }, ago(j.created_at)), el("td", {}, cancel));
}

function renderJobs() {
  const rows = [...state.jobs.values()].sort((a, b) => b.created_at - a.created_at).slice(0, 200);
  $("#jobs tbody").replaceChildren(...rows.map(jobRow));
  renderCounts();
}

async function refreshJobs() {
  try {
    const data = await api("GET", "/v1/jobs?limit=200");
    for (const j of data.jobs) upsertJob(j);
    renderJobs();
  } catch (e) { say(`jobs: ${e.message}`); }
}

async function openDetail(id) {
  state.detail = id;
  let j;
  try { j = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`); } catch (e) { say(e.message); return; }
  upsertJob(j);
  const box = $("#detail-body");
  const err = j.error ? el("p", { class: "error" }, `${j.error.code}: ${j.error.message}${j.error.node_type ? ` (node ${j.error.node_id} ${j.error.node_type})` : ""}`) : null;
  box.replaceChildren(...[
    el("h2", {}, `job ${j.id}`),
    el("p", {}, el("span", { class: `badge ${j.status}` }, j.status), ` attempt ${j.attempt}`, j.agent_id ? ` on ${j.agent_id}` : "",
      ` · priority ${j.priority} · VRAM ${j.resources.vram_mb} MB · retries ${j.retries_used}/${j.max_retries}`),
    j.pending_reason && j.status === "QUEUED" ? el("p", { class: "meta" }, `waiting: ${j.pending_reason}`) : null,
    err,
    el("div", { class: "outputs" }, (j.outputs || []).map((o) => (o.content_type || "").startsWith("image/")
      ? el("a", { href: o.url, target: "_blank" }, image({ class: "output", alt: o.name, title: o.name }, o.url))
      : el("a", { href: o.url }, o.name))),
    el("h2", {}, "history"),
    el("table", { class: "history" }, el("tbody", {}, j.history.map((t) => el("tr", {},
      el("td", {}, new Date(t.at * 1000).toLocaleTimeString()), el("td", {}, `${t.from_status || ""} → ${t.to_status}`),
      el("td", {}, `#${t.attempt}`), el("td", {}, t.agent_id || ""), el("td", {}, t.reason)))))].filter(Boolean));
  $("#detail").hidden = false;
}

// ------------------------------------------------------------------ submit by drop

async function submitFile(file) {
  let workflow;
  try { workflow = JSON.parse(await file.text()); } catch (e) { say(`${file.name} is not JSON: ${e.message}`); return; }
  if (workflow && workflow.nodes && workflow.links) {
    say("This is a UI-format workflow. In ComfyUI enable Dev mode and use 'Save (API Format)' / 'Export (API)', then drop that file.");
    return;
  }
  if (workflow && typeof workflow.workflow === "object") workflow = workflow.workflow;
  const body = { workflow };
  const vram = parseInt($("#vram").value, 10);
  if (!Number.isNaN(vram)) body.resources = { vram_mb: vram };
  try {
    const job = await api("POST", "/v1/jobs", body, { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : String(Math.random()) });
    upsertJob(job); renderJobs(); say(`submitted ${job.id}`, false);
  } catch (e) { say(`submit refused: ${e.message}`); }
}

function setupDrop() {
  const zone = $("#dropzone");
  const input = $("#workflow-file");
  input.addEventListener("change", () => { if (input.files[0]) submitFile(input.files[0]); input.value = ""; });
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => { ev.preventDefault(); zone.classList.remove("over");
    const file = ev.dataTransfer.files[0]; if (file) submitFile(file); });
  $("#vram").addEventListener("click", (ev) => ev.preventDefault());
  $("#close-detail").addEventListener("click", () => { $("#detail").hidden = true; state.detail = null; });
}

// ------------------------------------------------------------------ live events

function dispatch(kind, raw) {
  const d = JSON.parse(raw);
  if (kind === "job") {
    upsertJob(d); renderJobs();
    if (state.detail === d.job_id) openDetail(d.job_id);
    agentsSoon();
  } else if (kind === "progress") {
    upsertJob({ job_id: d.job_id, progress: d }); renderJobs();
  } else if (kind === "preview") {
    const j = upsertJob({ job_id: d.job_id }); j.preview = d.url; renderJobs();
  } else if (kind === "agent" || kind === "comfyui_restarted") {
    agentsSoon();
  }
}

function setLive(on) {
  const live = $("#live");
  live.textContent = on ? "live" : "reconnecting";
  live.className = on ? "live on" : "live off";
}

// Server-Sent Events over fetch: resumes with Last-Event-ID after a dropped connection.
async function follow() {
  let last = null;
  for (;;) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (last !== null) h["Last-Event-ID"] = last;
      const resp = await fetch("/v1/events", { headers: h, cache: "no-store" });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      setLive(true); refreshAgents(); refreshJobs();
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      let ev = { kind: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (ev.id !== null) last = ev.id;
            if (ev.data.length) {
              try { dispatch(ev.kind, ev.data.join("\n")); } catch (e) { console.error(e); }
            }
            ev = { kind: "message", data: [], id: null };
          } else if (!line.startsWith(":")) {
            const c = line.indexOf(":");
            const name = c < 0 ? line : line.slice(0, c);
            let val = c < 0 ? "" : line.slice(c + 1);
            if (val.startsWith(" ")) val = val.slice(1);
            if (name === "data") ev.data.push(val);
            else if (name === "event") ev.kind = val;
            else if (name === "id") ev.id = val;
          }
        }
      }
    } catch (e) {
      say(`live updates: ${e.message}; retrying`);
    }
    setLive(false);
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

function setupKey() {
  const button = $("#key");
  button.textContent = apiKey() ? "API key ✓" : "API key";
  button.addEventListener("click", () => {
    const key = prompt("API key for this coordinator (kept in this browser; empty to forget)", apiKey());
    if (key === null) return;
    if (key) localStorage.setItem("comfyfleet.apiKey", key.trim());
    else localStorage.removeItem("comfyfleet.apiKey");
    location.reload();
  });
}

setupDrop();
setupKey();
refreshAgents();
refreshJobs();
follow();
setInterval(refreshAgents, 5000);  // ages and measured numbers between events
