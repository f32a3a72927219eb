/* llmops console: plain JavaScript over the public API. The keys live in sessionStorage (this tab only). */
"use strict";

const $ = (sel) => document.querySelector(sel);
const store = {
  get key() { return sessionStorage.getItem("llmops.apiKey") || ""; },
  get admin() { return sessionStorage.getItem("llmops.adminKey") || ""; },
  save(key, admin) {
    for (const [name, value] of [["llmops.apiKey", key], ["llmops.adminKey", admin]]) {
      if (value) sessionStorage.setItem(name, value); else sessionStorage.removeItem(name);
    }
  },
};
const state = { models: {}, history: [], abort: null, job: null, modelsTimer: null };

/* ---------- HTTP ---------- */

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status; this.code = err.code || err.type; this.param = err.param;
  }
}

function headers(admin, extra) {
  const h = { "Content-Type": "application/json", ...(extra || {}) };
  const secret = admin ? store.admin : store.key;
  if (secret) h.Authorization = `Bearer ${secret}`;
  return h;
}

async function api(path, { method = "GET", body, admin = false, signal, extra } = {}) {
  const res = await fetch(path, { method, headers: headers(admin, extra), signal,
    body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok && !(path === "/ready" && data)) throw new ApiError(res.status, data);
  return { data, res };
}

/* ---------- small helpers ---------- */

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}
const fmtUsd = (v) => v === null || v === undefined ? "–"
  : `$${Number(v).toFixed(v >= 1 || v === 0 ? 2 : v >= 0.01 ? 4 : 6)}`;
const fmtInt = (v) => v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US");
const fmtMs = (ms) => ms === null ? "–" : ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
const fmtDate = (s) => s ? new Date(s * 1000).toISOString().slice(0, 16).replace("T", " ") : "–";

let toastTimer = null;
function toast(message, kind = "error") {
  const t = $("#toast");
  t.textContent = message; t.className = kind; t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
}
function explain(err) {
  if (err.status === 401) return `${err.message}. Enter an API key under Credentials.`;
  if (err.status === 403 && /admin/.test(err.message)) return `${err.message}. Enter the admin key under Credentials.`;
  return err.message;
}

/* ---------- navigation ---------- */

const VIEWS = ["playground", "images", "usage", "keys", "spend", "models"];
const LOADERS = { usage: loadUsage, keys: loadKeys, spend: loadSpend, models: loadModelStates };

function show(view) {
  if (!VIEWS.includes(view)) view = "playground";
  for (const v of VIEWS) $(`#view-${v}`).hidden = v !== view;
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  clearInterval(state.modelsTimer);
  if (view === "models") state.modelsTimer = setInterval(loadModelStates, 3000);
  if (LOADERS[view]) LOADERS[view]();
}

/* ---------- server, models ---------- */

async function loadServer() {
  const status = $("#server-status");
  try {
    const { data } = await api("/ready");
    state.models = data.models || {};
    const cls = data.status === "ready" ? "ready" : data.status === "draining" ? "failed" : "loading";
    status.replaceChildren(el("span", { class: `dot ${cls}`, "aria-hidden": "true" }),
      `Server ${data.status.replace("_", " ")} · ${Object.keys(state.models).length} models`);
  } catch {
    status.replaceChildren(el("span", { class: "dot down", "aria-hidden": "true" }), "Server unreachable");
  }
  await loadModelList();
}

async function loadModelList() {
  let ids = Object.keys(state.models);
  try {
    ids = (await api("/v1/models")).data.data.map((m) => m.id);
  } catch (err) {
    if (err.status === 401) toast(explain(err), "info");
  }
  const kind = (id) => (state.models[id] && state.models[id].kind) || "chat";
  fillSelect($("#chat-model"), ids.filter((id) => kind(id) !== "image"), "No chat models");
  fillSelect($("#image-model"), ids.filter((id) => kind(id) === "image"), "No image models");
}

function fillSelect(select, ids, none) {
  const previous = select.value;
  select.replaceChildren(...(ids.length ? ids.map((id) => el("option", { value: id }, id))
    : [el("option", { value: "" }, none)]));
  if (ids.includes(previous)) select.value = previous;
}

/* ---------- playground ---------- */

function addMessage(role, text) {
  $("#transcript-empty")?.remove();
  const who = { user: "You", assistant: $("#chat-model").value || "model", error: "Error" }[role];
  const body = el("span", { class: "body" }, text);
  const node = el("div", { class: `msg ${role}` }, el("span", { class: "who" }, who), body);
  $("#transcript").append(node);
  node.scrollIntoView({ block: "end" });
  return { node, body };
}

function chatBody(prompt) {
  const system = $("#system-prompt").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...state.history,
    { role: "user", content: prompt }];
  const body = { model: $("#chat-model").value, messages, temperature: Number($("#temperature").value),
    top_p: Number($("#top-p").value), max_tokens: Number($("#max-tokens").value) || undefined,
    stream: $("#stream").checked };
  if ($("#seed").value !== "") body.seed = Number($("#seed").value);
  if (body.stream) body.stream_options = { include_usage: true };
  const schema = $("#response-format").value.trim();
  if (schema) {
    let parsed;
    try { parsed = JSON.parse(schema); } catch (e) { throw new Error(`The JSON schema is not valid JSON: ${e.message}`); }
    body.response_format = { type: "json_schema", json_schema: { name: "output", schema: parsed } };
  }
  return body;
}

function setReadout({ prompt, completion, ttft, total, cache }) {
  $("#ro-tokens").textContent = prompt === undefined ? "–" : `${fmtInt(prompt)} → ${fmtInt(completion)}`;
  $("#ro-ttft").textContent = fmtMs(ttft ?? null);
  $("#ro-latency").textContent = fmtMs(total ?? null);
  const gen = total - (ttft ?? 0);
  $("#ro-speed").textContent = completion && gen > 0 ? `${(completion / (gen / 1000)).toFixed(1)} tok/s` : "–";
  $("#ro-cache").textContent = cache || "–";
}

function busy(on) {
  $("#send").disabled = on; $("#stop").hidden = !on;
}

async function send(event) {
  event.preventDefault();
  const prompt = $("#message").value.trim();
  if (!prompt || state.abort) return;
  let body;
  try { body = chatBody(prompt); } catch (err) { toast(err.message); return; }
  $("#message").value = "";
  addMessage("user", prompt);
  const out = addMessage("assistant", "");
  out.node.classList.add("streaming");
  state.abort = new AbortController();
  busy(true);
  const started = performance.now();
  const extra = $("#no-cache").checked ? { "Cache-Control": "no-cache" } : undefined;
  let text = "";
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(false, extra),
      body: JSON.stringify(body), signal: state.abort.signal });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    const cache = res.headers.get("X-Cache");
    const r = body.stream ? await readStream(res, out.body, started) : await readJson(res, out.body);
    text = r.text;
    setReadout({ ...r, total: performance.now() - started, cache });
  } catch (err) {
    if (err.name === "AbortError") {
      text = out.body.textContent;
      out.body.append(el("em", { class: "muted" }, " (stopped)"));
      setReadout({ total: performance.now() - started });
    } else {
      out.node.remove();
      addMessage("error", explain(err));
    }
  } finally {
    out.node.classList.remove("streaming");
    state.abort = null;
    busy(false);
    $("#message").focus();
  }
  if (text) state.history.push({ role: "user", content: prompt }, { role: "assistant", content: text });
}

async function readJson(res, target) {
  const data = await res.json();
  const text = data.choices[0].message.content || "";
  target.textContent = text;
  const u = data.usage || {};
  return { text, prompt: u.prompt_tokens, completion: u.completion_tokens, ttft: null };
}

async function readStream(res, target, started) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", ttft = null, chunks = 0, usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new ApiError(500, chunk);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (ttft === null) ttft = performance.now() - started;
          text += delta.content; chunks += 1;
          target.textContent = text;
          target.parentElement.scrollIntoView({ block: "end" });
        }
      }
    }
  }
  return { text, ttft, prompt: usage ? usage.prompt_tokens : undefined,
    completion: usage ? usage.completion_tokens : chunks };
}

/* ---------- images ---------- */

async function generate(event) {
  event.preventDefault();
  const body = { model: $("#image-model").value, prompt: $("#image-prompt").value.trim(),
    size: $("#image-size").value.trim(), num_inference_steps: Number($("#image-steps").value),
    guidance_scale: Number($("#image-guidance").value), response_format: "b64_json" };
  const negative = $("#negative-prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  if ($("#image-seed").value !== "") body.seed = Number($("#image-seed").value);
  $("#generate").disabled = true;
  $("#job").hidden = false;
  jobStatus("Submitting…", 0, 1);
  try {
    let job = (await api("/v1/images/jobs", { method: "POST", body })).data;
    state.job = job.id;
    $("#cancel-job").hidden = false;
    const started = performance.now();
    while (!["succeeded", "failed", "cancelled"].includes(job.status)) {
      showJob(job);
      await new Promise((r) => setTimeout(r, 250));
      job = (await api(`/v1/images/jobs/${job.id}`)).data;
    }
    showJob(job);
    if (job.status === "succeeded") addImages(job, body, performance.now() - started);
    if (job.status === "failed") toast(job.error ? job.error.message : "the job failed");
  } catch (err) {
    jobStatus(`Failed: ${explain(err)}`, 0, 1);
    toast(explain(err));
  } finally {
    state.job = null;
    $("#generate").disabled = false; $("#cancel-job").hidden = true;
  }
}

function showJob(job) {
  if (job.status === "queued") jobStatus(`Queued · position ${job.position ?? 0}`, 0, 1);
  else if (job.status === "running" && job.progress) {
    jobStatus(`Step ${job.progress.step} of ${job.progress.total}`, job.progress.step, job.progress.total);
  } else jobStatus(job.status[0].toUpperCase() + job.status.slice(1), job.status === "succeeded" ? 1 : 0, 1);
}

function jobStatus(text, value, max) {
  $("#job-status").textContent = text;
  const bar = $("#job-progress"); bar.max = max; bar.value = value;
}

function addImages(job, body, ms) {
  $("#gallery-empty")?.remove();
  for (const [i, img] of job.data.entries()) {
    const src = `data:image/png;base64,${img.b64_json}`;
    const fig = el("figure", {},
      el("img", { src, alt: `Generated: ${body.prompt}`, width: 256, height: 256 }),
      el("figcaption", {}, `${body.prompt} · ${body.size} · ${body.num_inference_steps} steps · ${fmtMs(ms)}`,
        " · ", el("a", { href: src, download: `${job.id}-${i}.png` }, "Download")));
    $("#gallery").prepend(fig);
  }
}

async function cancelJob() {
  if (!state.job) return;
  try { await api(`/v1/images/jobs/${state.job}`, { method: "DELETE" }); } catch (err) { toast(explain(err)); }
}

/* ---------- usage ---------- */

async function loadUsage() {
  const target = $("#usage-body");
  try {
    const u = (await api("/v1/usage")).data;
    const b = u.budget;
    const cards = el("div", { class: "cards" },
      el("div", { class: "panel card" }, el("h2", {}, u.name), el("p", { class: "muted" }, `key ${u.key_id}`),
        ...limitStats(u.limits)),
      el("div", { class: "panel card" }, el("h2", {}, "Budget"),
        b ? [el("p", { class: "big" }, fmtUsd(b.spent_usd)),
          el("div", { class: "meter", role: "meter", "aria-label": "Budget used", "aria-valuemin": 0,
            "aria-valuemax": b.limit_usd, "aria-valuenow": b.spent_usd },
          el("span", { style: `width:${Math.min(100, (100 * b.spent_usd) / (b.limit_usd || 1))}%` })),
          stat("Limit", `${fmtUsd(b.limit_usd)} per ${b.period}`), stat("Remaining", fmtUsd(b.remaining_usd)),
          stat("Resets", b.resets_at ? fmtDate(b.resets_at) : "never")]
          : el("p", { class: "muted" }, "No budget on this key.")),
      el("div", { class: "panel card" }, el("h2", {}, `${u.start} → ${u.end}`),
        stat("Requests", fmtInt(sum(u.data, "requests"))), stat("Tokens in", fmtInt(sum(u.data, "prompt_tokens"))),
        stat("Tokens out", fmtInt(sum(u.data, "completion_tokens"))), stat("Images", fmtInt(sum(u.data, "images"))),
        stat("Cost", fmtUsd(sum(u.data, "cost_usd")))));
    target.replaceChildren(cards, spendTable(u.data, ["day", "model"]));
  } catch (err) {
    target.replaceChildren(el("div", { class: "panel" }, el("p", {}, err.status === 401 && !store.key
      ? "Usage is reported per API key. This server may be open (no keys yet); otherwise enter your key under Credentials."
      : explain(err))));
  }
}

const sum = (rows, field) => rows.reduce((acc, r) => acc + (r[field] || 0), 0);
const stat = (name, value) => el("div", { class: "stat" }, el("span", {}, name), el("span", {}, value));
function limitStats(l) {
  return [stat("Requests/min", l.rpm ?? "no limit"), stat("Tokens/min", l.tpm ?? "no limit"),
    stat("In flight", l.max_concurrent ?? "no limit")];
}

function spendTable(rows, dims) {
  if (!rows.length) return el("div", { class: "panel" }, el("p", { class: "muted" }, "Nothing spent in this range."));
  const names = { key_id: "Key", model: "Model", day: "Day" };
  const cols = dims.map((d) => (d === "key" ? "key_id" : d));
  const top = Math.max(...rows.map((r) => r.cost_usd), 1e-12);
  return el("div", { class: "panel table-wrap" }, el("table", {},
    el("caption", { class: "sr-only" }, "Spend"),
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col" }, names[c])),
      ["Requests", "Tokens in", "Tokens out", "Images", "Cost"].map((h) => el("th", { scope: "col", class: "num" }, h)),
      el("th", { scope: "col" }, el("span", { class: "sr-only" }, "Share")))),
    el("tbody", {}, rows.map((r) => el("tr", {}, cols.map((c) => el("td", {}, r[c])),
      el("td", { class: "num" }, fmtInt(r.requests)), el("td", { class: "num" }, fmtInt(r.prompt_tokens)),
      el("td", { class: "num" }, fmtInt(r.completion_tokens)), el("td", { class: "num" }, fmtInt(r.images)),
      el("td", { class: "num" }, fmtUsd(r.cost_usd)),
      el("td", { style: "width:20%" }, el("div", { class: "bar", style: `width:${(100 * r.cost_usd) / top}%` })))))));
}

/* ---------- keys (admin) ---------- */

async function loadKeys() {
  const tbody = $("#keys-table tbody");
  try {
    const keys = (await api("/admin/keys", { admin: true })).data.data;
    tbody.replaceChildren(...(keys.length ? keys.reverse().map(keyRow)
      : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No keys yet: the server is open on loopback until the first one."))]));
  } catch (err) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 7 }, explain(err))));
  }
}

function keyRow(k) {
  const limits = [k.rpm && `${k.rpm} rpm`, k.tpm && `${fmtInt(k.tpm)} tpm`, k.max_concurrent && `${k.max_concurrent} in flight`,
    k.budget_usd !== null && `${fmtUsd(k.budget_usd)}/${k.budget_period}`].filter(Boolean).join(" · ") || "none";
  const revoked = Boolean(k.revoked_at);
  return el("tr", { class: revoked ? "revoked" : "" },
    el("td", {}, k.name), el("td", {}, el("code", {}, k.display)), el("td", {}, k.models.join(", ") || "all"),
    el("td", {}, limits), el("td", {}, fmtDate(k.created_at)),
    el("td", {}, el("span", { class: `pill ${revoked ? "bad" : "ok"}` }, revoked ? "revoked" : "active")),
    el("td", {}, revoked ? "" : el("button", { type: "button", class: "secondary", "aria-label": `Revoke ${k.name}`,
      onclick: () => revokeKey(k) }, "Revoke")));
}

async function createKey(event) {
  event.preventDefault();
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const body = { name: $("#key-name").value.trim(), priority: $("#key-priority").value,
    models: $("#key-models").value.split(",").map((m) => m.trim()).filter(Boolean),
    rpm: num("#key-rpm"), tpm: num("#key-tpm"), max_concurrent: num("#key-conc"),
    budget_usd: num("#key-budget"), budget_period: $("#key-period").value };
  try {
    const key = (await api("/admin/keys", { method: "POST", body, admin: true })).data;
    $("#secret-value").textContent = key.secret;
    $("#new-secret").hidden = false;
    $("#create-key").reset();
    $("#copy-secret").focus();
    await loadKeys();
  } catch (err) { toast(explain(err)); }
}

async function revokeKey(k) {
  if (!window.confirm(`Revoke ${k.name} (${k.display})? Requests with it will be refused at once.`)) return;
  try {
    await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE", admin: true });
    toast(`Revoked ${k.name}`, "info");
    await loadKeys();
  } catch (err) { toast(explain(err)); }
}

/* ---------- spend (admin), models ---------- */

async function loadSpend(event) {
  if (event) event.preventDefault();
  const group = $("#spend-group").value;
  const q = new URLSearchParams({ group_by: group });
  if ($("#spend-start").value) q.set("start", $("#spend-start").value);
  if ($("#spend-end").value) q.set("end", $("#spend-end").value);
  try {
    const r = (await api(`/admin/usage?${q}`, { admin: true })).data;
    const total = el("div", { class: "cards" },
      el("div", { class: "panel card" }, el("h2", {}, "Total"), el("p", { class: "big" }, fmtUsd(sum(r.data, "cost_usd"))),
        el("p", { class: "muted" }, `${r.start} → ${r.end}`)),
      el("div", { class: "panel card" }, el("h2", {}, "Traffic"), stat("Requests", fmtInt(sum(r.data, "requests"))),
        stat("Tokens", fmtInt(sum(r.data, "prompt_tokens") + sum(r.data, "completion_tokens"))),
        stat("Images", fmtInt(sum(r.data, "images")))));
    $("#spend-body").replaceChildren(total, spendTable(r.data, group.split(",")));
  } catch (err) {
    $("#spend-body").replaceChildren(el("div", { class: "panel" }, el("p", {}, explain(err))));
  }
}

async function loadModelStates() {
  await loadServer();
  const target = $("#models-body");
  const entries = Object.entries(state.models);
  target.replaceChildren(...entries.map(([name, m]) => el("div", { class: "panel card" },
    el("h2", {}, el("span", { class: `dot ${m.state}`, "aria-hidden": "true" }), name),
    stat("State", el("span", { class: `pill ${m.state === "ready" ? "ok" : m.state === "failed" ? "bad" : "warn"}` }, m.state)),
    stat("Kind", m.kind || "chat"), stat("Running", fmtInt(m.running)), stat("Queued", fmtInt(m.queued)),
    m.error ? el("p", { class: "muted" }, m.error) : null)));
}

/* ---------- wiring ---------- */

function init() {
  $("#api-key").value = store.key;
  $("#admin-key").value = store.admin;
  $("#admin-badge").classList.toggle("on", Boolean(store.admin));
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    store.save($("#api-key").value.trim(), $("#admin-key").value.trim());
    $("#admin-badge").classList.toggle("on", Boolean(store.admin));
    toast("Saved for this tab.", "info");
    loadServer();
    show(location.hash.slice(1));
  });
  $("#forget-keys").addEventListener("click", () => {
    store.save("", ""); $("#api-key").value = ""; $("#admin-key").value = "";
    $("#admin-badge").classList.remove("on");
    toast("Keys forgotten.", "info");
  });
  for (const [range, out] of [["#temperature", "#temperature-out"], ["#top-p", "#top-p-out"]]) {
    $(range).addEventListener("input", () => { $(out).textContent = $(range).value; });
  }
  $("#composer").addEventListener("submit", send);
  $("#message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("#composer").requestSubmit(); }
  });
  $("#stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("#clear-chat").addEventListener("click", () => {
    state.history = [];
    $("#transcript").replaceChildren(el("p", { class: "empty", id: "transcript-empty" }, "A fresh conversation."));
    setReadout({});
  });
  $("#image-form").addEventListener("submit", generate);
  $("#cancel-job").addEventListener("click", cancelJob);
  $("#refresh-usage").addEventListener("click", loadUsage);
  $("#create-key").addEventListener("submit", createKey);
  $("#copy-secret").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("#secret-value").textContent); toast("Copied.", "info"); }
    catch { toast("Select the secret and copy it by hand."); }
  });
  $("#dismiss-secret").addEventListener("click", () => { $("#new-secret").hidden = true; $("#secret-value").textContent = ""; });
  $("#spend-form").addEventListener("submit", loadSpend);
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  fetch("/openapi.json").then((r) => r.json()).then((s) => { $("#version").textContent = s.info.version; }).catch(() => {});
  loadServer();
  show(location.hash.slice(1));
}

document.addEventListener("DOMContentLoaded", init);
