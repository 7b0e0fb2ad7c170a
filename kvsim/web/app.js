// kvsim calculator page: reads the form, asks the local server (/api/...), draws the results.
// No libraries: the charts are plain SVG built here.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const SVG = "http://www.w3.org/2000/svg";
const MODEL_FIELDS = ["layers", "kv-heads", "head-dim", "params-b", "kv-lora-rank", "qk-rope-head-dim",
  "sliding-window", "sliding-layers"];
const CV_THINK = ["lognormal", "gamma"];
const COLORS = { lru: "#1f77b4", fifo: "#e07000", seed: "#c62828" };
// The stacked parts of a tiered curve (GPU at the bottom): the method's colour, fainter down the tiers.
const TIER_OPACITY = { gpu: 0.32, cpu: 0.14, disk: 0.06 };
const OFFLOAD_OPTIONS = ["offload-mode", "cpu-bandwidth-gbps"];
// The latency targets' boxes (inputs named slo-METRIC): sent as one "slo" text, as kvsim plan --slo takes it.
const SLO_METRICS = ["ttft-p99", "tpot-p99"];
const CACHING = { on: { color: "#1f77b4", label: "caching on" }, off: { color: "#7a7a7a", label: "caching off" } };

const form = $("#inputs");
let presets = null;
let seq = 0;            // the latest calc request
let controller = null;  // aborts a superseded request
let timer = null;
let current = null;     // {key, params, calc}
// The background simulations (the server runs one at a time): the inputs each kind was last started
// with, and what it reported: the memory sweep's points, the engine's points, the plan's status.
const jobKeys = { memory: null, load: null, plan: null };
let simPoints = [];
let loadPoints = [];
let planStatus = null;
let jobRunning = false;
let simTimer = null;
let serving = null;     // {key, body}: the latest /api/serving answer shown

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, parent = null, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

const ms = (t) => (1000 * t).toFixed(1) + " ms";
const pct = (x, digits = 1) => (x === null || x === undefined ? "–" : (100 * x).toFixed(digits) + "%");
const num = (x, digits = 0) => (x === null || x === undefined ? "–"
  : Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 }));

function fmtValue(x) {
  if (x === null || x === undefined) return "–";
  if (Number.isInteger(x) && Math.abs(x) >= 1) return num(x);
  return Math.abs(x) < 1000 ? Number(x.toPrecision(3)).toString() : num(x);
}

function fmtTime(t) {
  if (t === null || t === undefined) return "∞";
  return t < 100 ? t.toFixed(1) + " s" : num(t) + " s";
}

function niceTicks(lo, hi, count) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

// ------------------------------------------------------------------ form

function field(name) { return form.elements.namedItem(name); }

function fillSelect(name, options, labels = {}) {
  const select = field(name);
  select.replaceChildren();
  for (const value of options) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = labels[value] || value;
    select.appendChild(option);
  }
}

function applyPreset() {
  const name = field("preset").value;
  const model = presets.models[name];
  if (!model) return;
  for (const f of MODEL_FIELDS) {
    const key = f.replace(/-/g, "_");
    const v = model[key];
    field(f).value = v === null || v === undefined || v === 0 && f !== "layers" ? "" : v;
  }
}

function applyGpu() {
  const gib = presets.gpus[field("gpu").value];
  if (gib !== undefined) field("gpu-memory-gb").value = gib;
}

function updateEnabled() {
  const think = field("think-dist").value;
  field("think-cv").disabled = !CV_THINK.includes(think);
  const direct = field("capacity-tokens").value.trim() !== "";
  for (const f of ["gpu", "gpu-memory-gb", "gpus", "memory-utilization", "activation-reserve-gib"]) {
    field(f).closest("label").classList.toggle("muted", direct);
  }
  // the offload mode and bandwidth apply to a CPU tier only (empty or 0: none)
  const cpu = field("cpu-offload-gib").value.trim().replace(/_/g, "");
  const offload = cpu !== "" && Number(cpu) !== 0;
  for (const f of OFFLOAD_OPTIONS) {
    field(f).disabled = !offload;
    field(f).closest("label").classList.toggle("muted", !offload);
  }
}

// The request: the calc flags by name, as typed (the server validates and names bad fields).
function gather() {
  const params = {};
  const custom = field("preset").value === "custom";
  const direct = field("capacity-tokens").value.trim() !== "";
  for (const node of form.elements) {
    const name = node.name;
    if (!name || node.disabled || name.startsWith("slo-")) continue;
    const value = node.value.trim();
    if (name === "preset") { if (!custom) params.preset = value; continue; }
    if (MODEL_FIELDS.includes(name)) {
      if (custom && (value !== "" || ["layers", "kv-heads", "head-dim"].includes(name))) params[name] = value;
      continue;
    }
    if (name === "gpu") { if (!direct && value !== "custom") params.gpu = value; continue; }
    if (name === "gpu-memory-gb") { if (!direct && field("gpu").value === "custom") params[name] = value; continue; }
    if (node.hasAttribute("data-optional") && value === "") continue;
    params[name] = value;
  }
  return params;
}

// The latency targets given, as kvsim plan --slo takes them ("ttft-p99=0.5,tpot-p99=0.05"; "" for none).
function sloText() {
  return SLO_METRICS.map((m) => [m, field(`slo-${m}`).value.trim()]).filter(([, v]) => v !== "")
    .map(([m, v]) => `${m}=${v}`).join(",");
}

function servingParams(params) {
  const slo = sloText();
  return slo ? { ...params, slo } : params;
}

function clearErrors() {
  for (const e of $$(".err")) { e.textContent = ""; }
  for (const n of form.elements) { if (n.name) n.removeAttribute("aria-invalid"); }
  const top = $("#form-error");
  top.hidden = true;
  top.textContent = "";
}

// The form field an error names: the server names the targets "slo"; the box is the metric its message names.
function errorField(name, message) {
  if (name !== "slo") return name;
  const metric = SLO_METRICS.find((m) => message.includes(m)) ||
    SLO_METRICS.find((m) => field(`slo-${m}`).value.trim() !== "") || SLO_METRICS[0];
  return `slo-${metric}`;
}

// The messages next to their fields; whether any was shown.
function markErrors(errors) {
  let shown = false;
  for (const [named, message] of Object.entries(errors)) {
    const name = errorField(named, message);
    const slot = $(`.err[data-for="${CSS.escape(name)}"]`);
    const input = field(name);
    if (slot) { slot.textContent = message; shown = true; }
    if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
    if (slot) { const box = slot.closest("details"); if (box) box.open = true; }
  }
  return shown;
}

function showErrors(body) {
  clearErrors();
  const shown = markErrors(body.errors || {});
  if (!shown) {
    const top = $("#form-error");
    top.textContent = body.error || "invalid input";
    top.hidden = false;
  }
  document.body.dataset.state = "invalid";
  $("#results").classList.add("stale");
}

// ------------------------------------------------------------------ calculation

function schedule(delay = 120) {
  clearTimeout(timer);
  timer = setTimeout(run, delay);
}

async function run() {
  const params = gather();
  if (field("preset").value === "custom") {
    const missing = ["layers", "kv-heads", "head-dim"].filter((f) => !params[f]);
    if (missing.length) {
      const errors = {};
      for (const f of missing) errors[f] = `${f} is required for a custom model`;
      showErrors({ errors });
      return;
    }
  }
  const mine = ++seq;
  if (controller) controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  document.body.dataset.state = "busy";
  let result;
  try {
    result = await fetchJson("/api/calc", params, signal);
  } catch (e) {
    if (e.name === "AbortError") return;
    showErrors({ error: `the server did not answer: ${e.message}` });
    return;
  }
  if (mine !== seq) return;
  if (result.status !== 200) {
    if (result.status === 400) showErrors(result.body);
    else showErrors({ error: result.body.error || `server error ${result.status}` });
    return;
  }
  clearErrors();
  const key = JSON.stringify(params);
  current = { key, params, calc: result.body };
  renderCalc(result.body);
  $("#results").classList.remove("stale");
  document.body.dataset.state = "ready";
  document.body.dataset.seq = String(mine);
  // A slow workload's FIFO curve, sensitivity and advice take a little longer: they follow.
  const curves = Promise.all(result.body.curve.incomplete.map(async (method) => {
    const r = await fetchJson("/api/curve", { ...params, method }, signal).catch(() => null);
    if (mine !== seq || !r || r.status !== 200) return;
    const c = result.body.curve;
    c[method] = r.body[method];
    c.incomplete = c.incomplete.filter((m) => m !== method);
    if (method === "lru") c.seed = r.body.seed;
    drawChart();
  }));
  // The serving figures come in parts when the models are slow: the headline, then the chart's rates.
  const withSlo = servingParams(params);
  const [sens, adv, serv] = await Promise.all([
    untilComplete("/api/sensitivity", params, signal, mine, "#sensitivity-status").catch(() => null),
    untilComplete("/api/advice", params, signal, mine, "#advice-status").catch(() => null),
    untilComplete("/api/serving", withSlo, signal, mine, "#serving-status",
      (body) => renderServing(body, JSON.stringify(withSlo))).catch(() => null),
  ]);
  await curves;
  if (mine !== seq) return;
  if (sens && sens.status === 200 && !sens.body.incomplete) renderSensitivity(sens.body);
  if (adv && adv.status === 200 && !adv.body.incomplete) renderAdvice(adv.body);
  if (serv && serv.status !== 200) showServingErrors(serv.body, serv.status);
  const t = result.body.timing_ms;
  const took = (r, what) => (r && r.status === 200 ? `; ${what} ${r.ms.toFixed(0)} ms` +
    (r.rounds > 1 ? ` in ${r.rounds} requests` : "") : "");
  $("#timing").textContent = `models ${t.models.toFixed(0)} ms, with the curves ${t.total.toFixed(0)} ms` +
    took(sens, "sensitivity") + took(adv, "advice") + took(serv, "under load");
  document.body.dataset.extras = String(mine);
}

// /api/sensitivity, /api/advice and /api/serving answer within a time budget: an answer flagged
// incomplete is asked for again, and goes further, as the server keeps what it computed. Sensitivity
// and advice send nothing but the flag; the serving figures what they have so far (onAnswer shows it).
const MAX_ROUNDS = 60;
const COMMAND_OF = { "/api/sensitivity": "sensitivity", "/api/advice": "calc --advise", "/api/serving": "calc --engine" };

async function untilComplete(path, params, signal, mine, statusSel, onAnswer = null) {
  const status = $(statusSel);
  let r = null, ms = 0, rounds = 0;
  while (rounds < MAX_ROUNDS) {
    r = await fetchJson(path, params, signal);
    rounds += 1;
    if (r.status === 200 && r.body.timing_ms) ms += r.body.timing_ms.total;
    if (onAnswer && mine === seq && r.status === 200) onAnswer(r.body);
    if (mine !== seq || r.status !== 200 || !r.body.incomplete) break;
    status.hidden = false;
    status.textContent = `computing… (${rounds} requests so far, each within the server's time budget)`;
  }
  if (mine === seq) {
    const unfinished = r && r.status === 200 && r.body.incomplete;
    status.hidden = !unfinished;
    status.textContent = unfinished ? `not finished after ${rounds} requests of the server's time budget: ` +
      `kvsim ${COMMAND_OF[path]} computes it` : "";
  }
  return r && { ...r, ms, rounds };
}

async function fetchJson(path, params, signal) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(params), signal,
  });
  let body;
  try { body = await response.json(); } catch (e) { body = { error: `bad response (${response.status})` }; }
  return { status: response.status, body };
}

function renderCalc(r) {
  const m = r.memory;
  const policy = r.policy;
  $("#bytes-per-token").textContent = num(m.bytes_per_token) + " B";
  $("#attention").textContent = `${r.model.attention}, KV ${r.kv_dtype}`;
  $("#capacity").textContent = num(m.capacity_tokens) + " tokens";
  $("#capacity-sub").textContent = `${num(m.capacity_blocks)} blocks of ${m.block_size} · ${m.kv_cache_gib.toFixed(1)} GiB` +
    (r.fleet ? " per instance" : "");
  const o = r.offload;  // tiers below the GPU: the LRU and FIFO results are the tiered models
  const tierName = (name) => name.toUpperCase();
  $("#policy-name").textContent = policy.toUpperCase() + " model" +
    (r.fleet ? `, ${r.fleet.instances} instances, ${r.fleet.router}` : "") +
    (o ? `, ${o.tiers.map(tierName).join(" + ")} (${o.mode})` : "");
  const chosen = r.methods[policy];
  $("#token-hit").textContent = pct(chosen.token_hit_rate);
  $("#request-hit").textContent = `request hit rate ${pct(chosen.request_hit_rate)}`;
  const split = $("#tier-split"), prefill = $("#prefill");
  split.hidden = prefill.hidden = !(o && chosen.tiers);
  if (o && chosen.tiers) {
    split.textContent = Object.entries(chosen.tiers).map(([n, t]) => `${tierName(n)} ${pct(t.token_hit_rate)}`).join(" + ");
    const tt = chosen.ttft;
    const change = tt.gpu_only ? 100 * (tt.tiered / tt.gpu_only - 1) : 0;
    prefill.textContent = `prefill ${ms(tt.tiered)} (GPU alone ${ms(tt.gpu_only)}, ` +
      `${change >= 0 ? "+" : "−"}${Math.abs(change).toFixed(0)}%)`;
  }
  const memoryLine = r.summary.find((line) => line.startsWith("memory"));
  $("#memory-line").textContent = memoryLine ? memoryLine.replace(/^memory\s+/, "") : `capacity given directly: ${num(m.capacity_tokens)} tokens`;
  const note = $("#memory-note");
  note.hidden = !m.bytes_per_token_note;
  note.textContent = m.bytes_per_token_note || "";
  const notes = $("#notes");
  notes.hidden = !r.notes.length;
  notes.textContent = r.notes.join(" ");
  $("#methods").classList.toggle("tiered", Boolean(o));
  for (const row of $$("#methods tbody tr")) {
    const res = r.methods[row.dataset.method];
    $(".token", row).textContent = res ? pct(res.token_hit_rate) : "–";
    $(".by-tier", row).textContent = !res ? "–" : res.tiers
      ? Object.entries(res.tiers).map(([n, t]) => `${tierName(n)} ${pct(t.token_hit_rate)}`).join(" + ")
      : "GPU only";
    $(".request", row).textContent = res ? pct(res.request_hit_rate) : "–";
    $(".t", row).textContent = !res ? ((r.method_notes || {})[row.dataset.method] || "not evaluated") : row.dataset.method === "seed" ? "–" : fmtTime(res.characteristic_time);
    row.classList.toggle("chosen", row.dataset.method === policy);
  }
  $("#summary").textContent = r.summary.join("\n");
  drawChart();
}

// ------------------------------------------------------------------ hit rate vs memory

function drawChart() {
  const svg = $("#chart");
  svg.replaceChildren();
  if (!current) return;
  const r = current.calc;
  const c = r.curve;
  const sims = jobKeys.memory === current.key ? simPoints : [];
  const W = 760, H = 320, panelW = 370, m = { l: 46, r: 12, t: 26, b: 62 };
  const models = ["lru", "fifo"].filter((n) => c[n]);
  const xs = [].concat(...models.map((n) => c[n].x));
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const ih = H - m.t - m.b;
  const panels = [["token", "token hit rate"], ["request", "request hit rate"]];
  panels.forEach(([metric, title], p) => {
    const ox = p * (panelW + 20);
    const iw = panelW - m.l - m.r;
    const X = (x) => ox + m.l + ((x - x0) / (x1 - x0 || 1)) * iw;
    const Y = (y) => m.t + (1 - y) * ih;
    const g = el("g", { class: `panel panel-${metric}` }, svg);
    el("text", { x: ox + m.l + iw / 2, y: 16, class: "title", "text-anchor": "middle" }, g, title);
    for (const t of [0, 0.2, 0.4, 0.6, 0.8, 1]) {
      el("line", { x1: X(x0), x2: X(x1), y1: Y(t), y2: Y(t), class: "grid" }, g);
      el("text", { x: X(x0) - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, g, `${Math.round(100 * t)}%`);
    }
    for (const t of niceTicks(x0, x1, 6)) {
      el("line", { x1: X(t), x2: X(t), y1: Y(0), y2: Y(0) + 4, class: "axis" }, g);
      el("text", { x: X(t), y: Y(0) + 16, class: "tick", "text-anchor": "middle" }, g, fmtValue(t));
    }
    el("line", { x1: X(x0), x2: X(x1), y1: Y(0), y2: Y(0), class: "axis" }, g);
    el("line", { x1: X(x0), x2: X(x0), y1: Y(0), y2: Y(1), class: "axis" }, g);
    el("text", { x: ox + m.l + iw / 2, y: Y(0) + 32, class: "label", "text-anchor": "middle" }, g, c.x_label);
    // now
    if (c.here >= x0 && c.here <= x1) {
      el("line", { x1: X(c.here), x2: X(c.here), y1: Y(0), y2: Y(1), class: "here" }, g);
    }
    const pending = c.incomplete.filter((n) => c[n].x.length < 2);
    if (pending.length) {
      el("text", { x: X(x1) - 4, y: Y(0.04), class: "tick", "text-anchor": "end" }, g,
        `${pending.map((n) => n.toUpperCase()).join(", ")} curve: computing…`);
    }
    const stacked = tieredCurve(r);
    if (metric === "token" && stacked) {
      const data = c[stacked];
      let below = data.x.map(() => 0);
      for (const name of c.tiers) {
        const above = below.map((b, i) => b + data.tiers[name][i]);
        const top = data.x.map((x, i) => `${i ? "L" : "M"}${X(x).toFixed(1)},${Y(above[i]).toFixed(1)}`).join("");
        const bottom = data.x.map((x, i) => `L${X(x).toFixed(1)},${Y(below[i]).toFixed(1)}`).reverse().join("");
        el("path", { d: top + bottom + "Z", class: `tier-area tier-${name}`, fill: COLORS[stacked],
          "fill-opacity": TIER_OPACITY[name] || 0.05, "data-points": data.x.length }, g);
        below = above;
      }
    }
    const curves = metric === "request" && c.seed ? [...models, "seed"] : models;
    for (const name of curves) {
      const data = c[name];
      const d = data.x.map((x, i) => `${i ? "L" : "M"}${X(x).toFixed(1)},${Y(data[metric][i]).toFixed(1)}`).join("");
      el("path", { d, class: `curve curve-${name}`, stroke: COLORS[name], "data-points": data.x.length }, g);
    }
    for (const name of models) {
      const v = r.methods[name][metric === "token" ? "token_hit_rate" : "request_hit_rate"];
      if (c.here >= x0 && c.here <= x1) el("circle", { cx: X(c.here), cy: Y(v), r: 3.5, fill: COLORS[name], class: "now-dot" }, g);
    }
    for (const s of sims) {
      const est = s[metric === "token" ? "token_hit_rate" : "request_hit_rate"];
      if (est.mean === null) continue;
      errorBar(g, X(s.x) + (s.policy === "lru" ? -3 : 3), Y, est, `sim-point sim-${s.policy}`, COLORS[s.policy]);
    }
  });
  // legend
  const tiered = Boolean(c.tiers);
  const items = [["lru", tiered ? "LRU total" : "LRU model", ""], ["fifo", tiered ? "FIFO total" : "FIFO model", ""],
    ["seed", tiered ? "seed (GPU only)" : "seed model (same capacity)", "6 4"]]
    .filter(([name]) => (name === "seed" && c.seed) || models.includes(name));
  const ly = H - 10;
  let lx = legendLines(svg, items.map(([name, label, dash]) => [COLORS[name], dash, label]), 60, ly);
  const stacked = tieredCurve(r);
  if (stacked) {
    for (const name of c.tiers) {
      const label = `${name.toUpperCase()} part`;
      el("rect", { x: lx, y: ly - 9, width: 14, height: 10, fill: COLORS[stacked], "fill-opacity": TIER_OPACITY[name] || 0.05,
        stroke: COLORS[stacked], "stroke-width": 0.5, class: `legend-tier legend-tier-${name}` }, svg);
      el("text", { x: lx + 19, y: ly, class: "legend" }, svg, label);
      lx += 30 + label.length * 6.4;
    }
  }
  legendEnd(svg, lx, ly, sims.length > 0);
}

// A legend's line samples ([color, dash, label]) from lx on; where the next item starts.
function legendLines(svg, items, lx, ly) {
  for (const [color, dash, label] of items) {
    el("line", { x1: lx, x2: lx + 22, y1: ly - 4, y2: ly - 4, stroke: color, "stroke-width": 2.5, "stroke-dasharray": dash }, svg);
    el("text", { x: lx + 28, y: ly, class: "legend" }, svg, label);
    lx += 40 + label.length * 6.4;
  }
  return lx;
}

// A legend's last items: the "now" mark, and the simulated points' if there are any.
function legendEnd(svg, lx, ly, simulated) {
  el("line", { x1: lx, x2: lx, y1: ly - 10, y2: ly + 2, class: "here" }, svg);
  el("text", { x: lx + 6, y: ly, class: "legend" }, svg, "now");
  lx += 46;
  if (simulated) {
    el("rect", { x: lx, y: ly - 7, width: 6, height: 6, fill: "white", stroke: "#333" }, svg);
    el("text", { x: lx + 12, y: ly, class: "legend" }, svg, "simulated (95% CI)");
  }
}

// The method whose curve is stacked by tier: the policy's (else LRU), once it has two points.
function tieredCurve(r) {
  const c = r.curve;
  if (!c.tiers) return null;
  for (const name of [r.policy, "lru"]) {
    if (c[name] && c[name].tiers && c[name].x.length >= 2) return name;
  }
  return null;
}

function showNotes(sel, notes) {
  const node = $(sel);
  node.hidden = !(notes && notes.length);
  node.textContent = (notes || []).join(" ");
}

// ------------------------------------------------------------------ under load

const secs = (t) => (t === null || t === undefined ? "–" : t < 1 ? `${(1000 * t).toPrecision(3)} ms` : `${t.toPrecision(3)} s`);

function setText(sel, text) { $(sel).textContent = text; }

function renderServing(body, key) {
  serving = { key, body };
  $("#serving").classList.remove("stale");
  $("#serving-cards").classList.remove("stale");
  const under = $("#hit-under-load");
  if (body.unavailable || !body.caching) {  // no models for these inputs, or the headline not computed yet
    if (body.unavailable) {
      for (const id of ["#ttft", "#tpot", "#throughput", "#sustainable"]) setText(id, "–");
      for (const id of ["#ttft-off", "#tpot-off", "#tokens-per-s", "#sustainable-off"]) setText(id, "");
      under.hidden = true;
      setText("#serving-note", body.unavailable);
      setText("#slo-models", body.unavailable);
    }
    drawLoadChart();
    updateJobButtons();
    return;
  }
  const { on, off } = body.caching;
  const latency = (r, name) => (r.saturated ? "saturated" : secs(r[name]));
  setText("#ttft", latency(on, "ttft_s"));
  setText("#ttft-off", `caching off: ${latency(off, "ttft_s")}`);
  setText("#tpot", latency(on, "tpot_s"));
  setText("#tpot-off", `caching off: ${latency(off, "tpot_s")}`);
  setText("#throughput", on.saturated ? "–" : `${fmtValue(on.requests_per_s)} req/s`);
  setText("#tokens-per-s", on.saturated ? `saturated: ${on.saturated}`
    : `${num(on.input_tokens_per_s)} in + ${num(on.output_tokens_per_s)} out tokens/s`);
  setText("#sustainable", `${fmtValue(on.saturation_arrival_rate)} conv/s`);
  setText("#sustainable-off", `= ${fmtValue(on.saturation_requests_per_s)} req/s; caching off: ` +
    `${fmtValue(off.saturation_arrival_rate)} conv/s`);
  under.hidden = false;
  under.textContent = on.saturated ? "under load: saturated (model)"
    : `under load ${pct(on.token_hit_rate)} (model: running requests hold ${pct(on.kv_usage)} of the cache)`;
  setText("#serving-note", `${body.notes.join(" ")} ${body.engine.line.replace(/^engine\s+/, "Engine: ")}.`);
  for (const [name, key2] of [["max-num-batched-tokens", "max_num_batched_tokens"], ["max-num-seqs", "max_num_seqs"]]) {
    field(name).placeholder = `${body.engine[key2]} (default)`;
  }
  const s = body.slo;
  if (!s) {
    setText("#slo-models", "Give a latency target (TTFT or TPOT p99, in the form) for the largest arrival rate " +
      "that meets it, with prefix caching on and off.");
  } else {
    const targets = s.targets.map((x) => `${x.name} ≤ ${x.seconds} s`).join(", ");
    const bound = (r) => `${fmtValue(r.model_bound_arrival_rate)} conversations/s (${fmtValue(r.model_bound_requests_per_s)} requests/s)`;
    setText("#slo-models", `Within ${targets}, the models allow at most ${bound(s.on)} with prefix caching and ` +
      `${bound(s.off)} without: an upper bound, as the models give means and a p99 is higher. ` +
      `A lone request takes TTFT ${secs(s.lone_request_s.ttft)}, TPOT ${secs(s.lone_request_s.tpot)}.`);
  }
  renderPlan();
  drawLoadChart();
  updateJobButtons();
}

function showServingErrors(body, status) {
  const shown = status === 400 && markErrors(body.errors || {});
  const line = $("#serving-status");
  line.hidden = Boolean(shown);
  line.textContent = shown ? "" : body.error || `server error ${status}`;
  $("#serving").classList.add("stale");
  $("#serving-cards").classList.add("stale");
}

// A path of a model's values, broken where it is saturated (null); [d, points drawn].
function linePath(xs, ys, X, Y) {
  let d = "", pen = false, n = 0;
  xs.forEach((x, i) => {
    const y = ys[i];
    if (y === null || y === undefined) { pen = false; return; }
    d += `${pen ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`;
    pen = true;
    n += 1;
  });
  return [d, n];
}

// A simulated estimate: a square at its mean, a bar over its 95% CI (if any).
function errorBar(parent, gx, Y, est, cls, color) {
  const [lo, hi] = est.ci95 || [est.mean, est.mean];
  const pg = el("g", { class: cls, stroke: color }, parent);
  el("line", { x1: gx, x2: gx, y1: Y(lo), y2: Y(hi) }, pg);
  el("line", { x1: gx - 3, x2: gx + 3, y1: Y(lo), y2: Y(lo) }, pg);
  el("line", { x1: gx - 3, x2: gx + 3, y1: Y(hi), y2: Y(hi) }, pg);
  el("rect", { x: gx - 3, y: Y(est.mean) - 3, width: 6, height: 6, fill: "white" }, pg);
  return pg;
}

// TTFT (log scale) and the token hit rate against the arrival rate: the models as lines, caching on
// and off; the engine's simulated points (TTFT p99 per replication) when they are for these inputs.
function drawLoadChart() {
  const svg = $("#load-chart");
  svg.replaceChildren();
  const W = 760, H = 320, panelW = 370, m = { l: 52, r: 12, t: 26, b: 62 };
  const body = serving ? serving.body : null;
  if (!body || body.unavailable || !body.chart || !body.chart.x.length) {
    el("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" }, svg,
      body && body.unavailable ? "no models under load for these inputs (see above)" : "computing…");
    return;
  }
  const c = body.chart;
  const sims = current && jobKeys.load === current.key ? loadPoints : [];
  const x0 = 0, x1 = c.x_max, here = body.arrival_rate;
  const ih = H - m.t - m.b, iw = panelW - m.l - m.r;
  const target = (body.slo ? body.slo.targets : []).find((x) => x.metric === "ttft");
  const values = [...c.on.ttft_s, ...c.off.ttft_s].filter((v) => v > 0);
  for (const s of sims) values.push(...[s.ttft_p99.mean, ...(s.ttft_p99.ci95 || [])].filter((v) => v > 0));
  if (target) values.push(target.seconds);
  const d0 = Math.floor(Math.log10(Math.min(...values)));
  const d1 = Math.max(d0 + 1, Math.ceil(Math.log10(Math.max(...values))));
  const decades = Array.from({ length: d1 - d0 + 1 }, (_, i) => 10 ** (d0 + i));
  const panels = [
    { name: "ttft", title: "TTFT (log scale): models' mean, simulated p99", ticks: decades, fmt: secs,
      Y: (v) => m.t + (1 - (Math.log10(Math.max(v, 10 ** d0)) - d0) / (d1 - d0)) * ih },
    { name: "hit", title: "token hit rate under load", ticks: [0, 0.2, 0.4, 0.6, 0.8, 1],
      fmt: (v) => `${Math.round(100 * v)}%`, Y: (v) => m.t + (1 - v) * ih },
  ];
  panels.forEach((panel, p) => {
    const ox = p * (panelW + 20);
    const X = (x) => ox + m.l + ((x - x0) / (x1 - x0 || 1)) * iw;
    const Y = panel.Y;
    const g = el("g", { class: `panel panel-${panel.name}` }, svg);
    el("text", { x: ox + m.l + iw / 2, y: 16, class: "title", "text-anchor": "middle" }, g, panel.title);
    for (const t of panel.ticks) {
      el("line", { x1: X(x0), x2: X(x1), y1: Y(t), y2: Y(t), class: "grid" }, g);
      el("text", { x: X(x0) - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, g, panel.fmt(t));
    }
    for (const t of niceTicks(x0, x1, 6)) {
      el("line", { x1: X(t), x2: X(t), y1: m.t + ih, y2: m.t + ih + 4, class: "axis" }, g);
      el("text", { x: X(t), y: m.t + ih + 16, class: "tick", "text-anchor": "middle" }, g, fmtValue(t));
    }
    el("line", { x1: X(x0), x2: X(x1), y1: m.t + ih, y2: m.t + ih, class: "axis" }, g);
    el("line", { x1: X(x0), x2: X(x0), y1: m.t + ih, y2: m.t, class: "axis" }, g);
    el("text", { x: ox + m.l + iw / 2, y: m.t + ih + 32, class: "label", "text-anchor": "middle" }, g,
      "arrival rate (conversations/s)");
    if (here >= x0 && here <= x1) el("line", { x1: X(here), x2: X(here), y1: m.t + ih, y2: m.t, class: "here" }, g);
    const lines = panel.name === "ttft"
      ? [["on", c.on.ttft_s, CACHING.on.color, ""], ["off", c.off.ttft_s, CACHING.off.color, "6 4"]]
      : [["on", c.on.token_hit_rate, CACHING.on.color, ""], ["instant", c.on.instant_token_hit_rate, CACHING.on.color, "2 3"]];
    for (const [name, ys, color, dash] of lines) {
      const [d, n] = linePath(c.x, ys, X, Y);
      el("path", { d, class: `curve load-curve load-${panel.name}-${name}`, stroke: color, "stroke-dasharray": dash,
        "data-points": n }, g);
    }
    if (panel.name === "ttft" && target) {
      el("line", { x1: X(x0), x2: X(x1), y1: Y(target.seconds), y2: Y(target.seconds), class: "target" }, g);
      el("text", { x: X(x0) + 4, y: Y(target.seconds) - 4, class: "tick" }, g, `target ${target.name} ${secs(target.seconds)}`);
    }
    for (const s of sims) {
      if (panel.name === "hit" && s.caching === "off") continue;  // nothing hits
      const est = panel.name === "ttft" ? s.ttft_p99 : s.token_hit_rate;
      if (est.mean === null) continue;
      const gx = X(s.arrival_rate) + (s.caching === "on" ? -3 : 3);
      errorBar(g, gx, Y, est, `sim-point load-point load-${s.caching}`, CACHING[s.caching].color);
    }
  });
  const items = [[CACHING.on.color, "", "caching on (model)"], [CACHING.off.color, "6 4", "caching off (model)"],
    [CACHING.on.color, "2 3", "hit rate without load"]];
  legendEnd(svg, legendLines(svg, items, 60, H - 10), H - 10, sims.length > 0);
}

// The plan's simulation, when it was for the inputs shown.
function renderPlan() {
  const line = $("#slo-simulated"), details = $("#plan-details");
  const s = planStatus;
  const shown = s && s.state === "done" && s.plan && current && jobKeys.plan === JSON.stringify(servingParams(current.params));
  line.hidden = details.hidden = !shown;
  if (!shown) return;
  const p = s.plan.prefix_caching, st = s.settings;
  const answer = (r) => (r.simulated_arrival_rate
    ? `${fmtValue(r.simulated_arrival_rate)} conversations/s (${fmtValue(r.simulated_requests_per_s)} requests/s)`
    : "no rate it tried");
  const gain = s.plan.caching_gain;
  line.textContent = `Simulated (shortened: ${st.replications} replications of ${num(st.duration)} s, warm-up ` +
    `${num(st.warmup)} s, per rate; kvsim plan --slo runs longer ones): the targets are met up to ${answer(p.on)} ` +
    `with prefix caching and ${answer(p.off)} without` +
    (gain === null ? "." : `: caching takes ${gain >= 0 ? "+" : "−"}${Math.abs(Math.round(100 * gain))}% more load.`);
  $("#plan-lines").textContent = s.plan_lines.join("\n");
}

// ------------------------------------------------------------------ sensitivity

function renderSensitivity(s) {
  showNotes("#sensitivity-notes", s.notes);
  const rows = s.rows;
  const svg = $("#tornado");
  svg.replaceChildren();
  const rowH = 26, top = 28, left = 250, right = 740;
  const H = top + rows.length * rowH + 34;
  svg.setAttribute("viewBox", `0 0 760 ${H}`);
  const X = (v) => left + v * (right - left);
  const base = s.base.token_hit_rate;
  const step = Math.round(100 * s.step);
  for (const t of [0, 0.2, 0.4, 0.6, 0.8, 1]) {
    el("line", { x1: X(t), x2: X(t), y1: top - 6, y2: top + rows.length * rowH, class: "grid" }, svg);
    el("text", { x: X(t), y: top + rows.length * rowH + 16, class: "tick", "text-anchor": "middle" }, svg, `${Math.round(100 * t)}%`);
  }
  rows.forEach((row, i) => {
    const y = top + i * rowH;
    const label = `${row.label} (${fmtValue(row.base)}${row.unit ? " " + row.unit : ""})`;
    el("text", { x: left - 8, y: y + rowH / 2 + 4, class: "tick", "text-anchor": "end" }, svg, label);
    for (const [v, cls, name] of [[row.token_hit_rate_low, "low", `−${step}%`], [row.token_hit_rate_high, "high", `+${step}%`]]) {
      if (v === null) continue;
      const a = Math.min(X(v), X(base)), b = Math.max(X(v), X(base));
      const bar = el("rect", { x: a, y: y + 4, width: Math.max(b - a, 1), height: rowH - 8, class: `bar ${cls}` }, svg);
      el("title", {}, bar, `${row.label} ${name} (${fmtValue(cls === "low" ? row.low : row.high)}): ${pct(v)}`);
    }
  });
  el("line", { x1: X(base), x2: X(base), y1: top - 8, y2: top + rows.length * rowH, class: "base" }, svg);
  el("text", { x: X(base), y: top - 12, class: "tick", "text-anchor": "middle" }, svg, `now ${pct(base)}`);
  el("rect", { x: left, y: H - 12, width: 12, height: 9, class: "bar low" }, svg);
  el("text", { x: left + 16, y: H - 4, class: "legend" }, svg, `input −${step}%`);
  el("rect", { x: left + 110, y: H - 12, width: 12, height: 9, class: "bar high" }, svg);
  el("text", { x: left + 126, y: H - 4, class: "legend" }, svg, `input +${step}%`);
  el("text", { x: left + 230, y: H - 4, class: "legend" }, svg, `token hit rate, ${s.method.toUpperCase()} model`);

  const tbody = $("#sensitivity tbody");
  tbody.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    const cells = [row.label, fmtValue(row.base) + (row.unit ? " " + row.unit : ""), fmtValue(row.low), fmtValue(row.high),
      pct(row.token_hit_rate_low), pct(row.token_hit_rate_high),
      row.elasticity === null ? "–" : (row.elasticity >= 0 ? "+" : "") + row.elasticity.toFixed(2)];
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
    if (row.note) tr.title = row.note;
    tbody.appendChild(tr);
  }
}

// ------------------------------------------------------------------ advice

function renderAdvice(a) {
  const shown = current ? current.calc.notes : [];  // the FIFO note is above already
  showNotes("#advice-notes", (a.notes || []).filter((n) => !shown.includes(n)));
  const ul = $("#advice");
  ul.replaceChildren();
  for (const item of a.advice) {
    const li = document.createElement("li");
    li.className = item.recommended ? "recommended" : "info";
    li.dataset.id = item.id;
    const lever = document.createElement("strong");
    lever.textContent = item.lever + ": ";
    li.appendChild(lever);
    li.appendChild(document.createTextNode(item.text));
    ul.appendChild(li);
  }
}

// ------------------------------------------------------------------ simulations

// Each kind: the endpoint that starts it, its button and its status line.
const JOBS = {
  memory: { path: "/api/simulate", button: "#simulate", status: "#sim-status" },
  load: { path: "/api/simulate-load", button: "#simulate-load", status: "#load-status" },
  plan: { path: "/api/simulate-plan", button: "#simulate-plan", status: "#plan-status" },
};

function jobStatus(kind, text, cls = "") {
  const s = $(JOBS[kind].status);
  s.textContent = text;
  s.className = cls;
}

// One job at a time; the engine's need the models under load, the plan's a latency target too.
function updateJobButtons() {
  const body = serving ? serving.body : null;
  const models = Boolean(body && body.caching && !body.unavailable);
  $(JOBS.memory.button).disabled = jobRunning;
  $(JOBS.load.button).disabled = jobRunning || !models;
  $(JOBS.plan.button).disabled = jobRunning || !(models && body.slo);
}

// The inputs a kind runs on: the plan's include the latency targets.
function jobParams(kind) {
  return kind === "plan" ? servingParams(current.params) : current.params;
}

async function startJob(kind) {
  if (!current) return;
  const params = jobParams(kind);
  const { status, body } = await fetchJson(JOBS[kind].path, params);
  if (status === 202) {
    jobKeys[kind] = JSON.stringify(params);
    if (kind === "memory") simPoints = [];
    else if (kind === "load") loadPoints = [];
    else planStatus = null;
    jobStatus(kind, `simulating: 0 of ${body.total} runs…`, "busy");
    jobRunning = true;
    updateJobButtons();
    pollJob();
  } else if (status === 409) {
    jobStatus(kind, body.error, "refused");
  } else if (status === 400 && kind === "memory") {
    showErrors(body);
  } else {
    if (status === 400) markErrors(body.errors || {});
    jobStatus(kind, body.error || `server error ${status}`, "refused");
  }
}

function shortened(st) {
  return `${st.replications} replications of ${num(st.duration)} s (warm-up ${num(st.warmup)} s)`;
}

const RUNNING_TEXT = {
  memory: (s) => `simulating: ${s.done} of ${s.total} runs (${(s.elapsed_s || 0).toFixed(0)} s)`,
  load: (s) => `simulating the engine: ${s.done} of ${s.total} runs (${(s.elapsed_s || 0).toFixed(0)} s)`,
  plan: (s) => `simulating the plan (kvsim plan --slo, shortened): ${(s.elapsed_s || 0).toFixed(0)} s so far, at most ` +
    `${num(s.settings.requests)} requests`,
};
const DONE_TEXT = {
  memory: (s) => `simulated ${s.total} runs in ${s.elapsed_s.toFixed(1)} s: ${shortened(s.settings)}; squares are ` +
    "means, bars 95% CIs",
  load: (s) => `simulated ${s.total} runs in ${s.elapsed_s.toFixed(1)} s, shortened: ${shortened(s.settings)} per rate; ` +
    "squares: TTFT p99 of each replication and the token hit rate, means and 95% CIs",
  plan: (s) => `simulated in ${s.elapsed_s.toFixed(1)} s`,
};

async function pollJob() {
  clearTimeout(simTimer);
  let s;
  try {
    s = await (await fetch("/api/simulate")).json();
  } catch (e) {
    for (const kind of Object.keys(JOBS)) if (jobKeys[kind]) jobStatus(kind, `lost the server: ${e.message}`, "refused");
    jobRunning = false;
    updateJobButtons();
    return;
  }
  const kind = s.kind || "memory";
  if (s.params && JSON.stringify(s.params) === jobKeys[kind]) {
    if (kind === "memory") simPoints = s.points;
    else if (kind === "load") loadPoints = s.points;
    else planStatus = s;
  }
  const shown = current && jobKeys[kind] === JSON.stringify(jobParams(kind));
  const where = shown ? "" : " (for earlier inputs: not drawn)";
  jobRunning = s.state === "running";
  updateJobButtons();
  if (s.state === "running") {
    jobStatus(kind, RUNNING_TEXT[kind](s) + where, "busy");
    simTimer = setTimeout(pollJob, 500);
  } else if (s.state === "done") {
    jobStatus(kind, DONE_TEXT[kind](s) + where, "done");
  } else if (s.state === "error") {
    jobStatus(kind, s.error, "refused");
  }
  drawChart();
  drawLoadChart();
  renderPlan();
}

// ------------------------------------------------------------------ start

async function init() {
  const response = await fetch("/api/presets");
  presets = await response.json();
  const models = Object.keys(presets.models);
  fillSelect("preset", [...models, "custom"], { custom: "custom…" });
  const gpuLabels = {};
  for (const [name, gib] of Object.entries(presets.gpus)) gpuLabels[name] = `${name} (${gib} GiB)`;
  fillSelect("gpu", [...Object.keys(presets.gpus), "custom"], { ...gpuLabels, custom: "custom…" });
  fillSelect("kv-dtype", presets.dtypes);
  fillSelect("weight-dtype", presets.dtypes);
  for (const name of ["turns-dist", "think-dist", "policy", "router", "offload-mode"]) fillSelect(name, presets.choices[name]);
  for (const [name, value] of Object.entries(presets.placeholders || {})) {
    const node = field(name);
    if (node) node.placeholder = `${value} (default)`;
  }
  for (const [name, value] of Object.entries(presets.defaults)) {
    const node = field(name);
    if (node && value !== null && value !== undefined && node.tagName !== undefined) node.value = value;
    if (node && presets.help[name]) node.closest("label").title = presets.help[name];
  }
  applyPreset();
  applyGpu();
  updateEnabled();
  form.addEventListener("input", onEdit);
  form.addEventListener("change", onEdit);
  form.addEventListener("submit", (e) => { e.preventDefault(); schedule(0); });
  for (const kind of Object.keys(JOBS)) $(JOBS[kind].button).addEventListener("click", () => startJob(kind));
  updateJobButtons();
  const s = await (await fetch("/api/simulate")).json();
  if (s.state === "running") { jobKeys[s.kind || "memory"] = JSON.stringify(s.params); pollJob(); }
  schedule(0);
}

function onEdit(event) {
  const name = event.target.name;
  if (name === "preset") applyPreset();
  else if (MODEL_FIELDS.includes(name) && event.type === "input") field("preset").value = "custom";
  else if (name === "gpu") applyGpu();
  else if (name === "gpu-memory-gb" && event.type === "input") field("gpu").value = "custom";
  updateEnabled();
  schedule();
}

document.addEventListener("DOMContentLoaded", init);
