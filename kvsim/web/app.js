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

const form = $("#inputs");
let presets = null;
let seq = 0;            // the latest calc request
let controller = null;  // aborts a superseded request
let timer = null;
let current = null;     // {key, params, calc}
let simKey = null;      // the inputs the running/last simulation was started with
let simPoints = [];
let simTimer = null;

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
    if (!name || node.disabled) continue;
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

function clearErrors() {
  for (const e of $$(".err")) { e.textContent = ""; }
  for (const n of form.elements) { if (n.name) n.removeAttribute("aria-invalid"); }
  const top = $("#form-error");
  top.hidden = true;
  top.textContent = "";
}

function showErrors(body) {
  clearErrors();
  const errors = body.errors || {};
  let shown = false;
  for (const [name, message] of Object.entries(errors)) {
    const slot = $(`.err[data-for="${CSS.escape(name)}"]`);
    const input = field(name);
    if (slot) { slot.textContent = message; shown = true; }
    if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
    if (slot) { const box = slot.closest("details"); if (box) box.open = true; }
  }
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
  const [sens, adv] = await Promise.all([
    untilComplete("/api/sensitivity", params, signal, mine, "#sensitivity-status").catch(() => null),
    untilComplete("/api/advice", params, signal, mine, "#advice-status").catch(() => null),
  ]);
  await curves;
  if (mine !== seq) return;
  if (sens && sens.status === 200 && !sens.body.incomplete) renderSensitivity(sens.body);
  if (adv && adv.status === 200 && !adv.body.incomplete) renderAdvice(adv.body);
  const t = result.body.timing_ms;
  const took = (r, what) => (r && r.status === 200 ? `; ${what} ${r.ms.toFixed(0)} ms` +
    (r.rounds > 1 ? ` in ${r.rounds} requests` : "") : "");
  $("#timing").textContent = `models ${t.models.toFixed(0)} ms, with the curves ${t.total.toFixed(0)} ms` +
    took(sens, "sensitivity") + took(adv, "advice");
  document.body.dataset.extras = String(mine);
}

// /api/sensitivity and /api/advice answer within a time budget: an answer flagged incomplete
// (nothing but the flag) is asked for again, and goes further, as the server keeps what it computed.
const MAX_ROUNDS = 60;

async function untilComplete(path, params, signal, mine, statusSel) {
  const status = $(statusSel);
  let r = null, ms = 0, rounds = 0;
  while (rounds < MAX_ROUNDS) {
    r = await fetchJson(path, params, signal);
    rounds += 1;
    if (r.status === 200 && r.body.timing_ms) ms += r.body.timing_ms.total;
    if (mine !== seq || r.status !== 200 || !r.body.incomplete) break;
    status.hidden = false;
    status.textContent = `computing… (${rounds} requests so far, each within the server's time budget)`;
  }
  if (mine === seq) {
    const unfinished = r && r.status === 200 && r.body.incomplete;
    status.hidden = !unfinished;
    status.textContent = unfinished ? `not finished after ${rounds} requests of the server's time budget: ` +
      `kvsim ${path === "/api/advice" ? "calc --advise" : "sensitivity"} computes it` : "";
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
  const sims = simKey === current.key ? simPoints : [];
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
      const [lo, hi] = est.ci95 || [est.mean, est.mean];
      const gx = X(s.x) + (s.policy === "lru" ? -3 : 3);
      const pg = el("g", { class: `sim-point sim-${s.policy}`, stroke: COLORS[s.policy] }, g);
      el("line", { x1: gx, x2: gx, y1: Y(lo), y2: Y(hi) }, pg);
      el("line", { x1: gx - 3, x2: gx + 3, y1: Y(lo), y2: Y(lo) }, pg);
      el("line", { x1: gx - 3, x2: gx + 3, y1: Y(hi), y2: Y(hi) }, pg);
      el("rect", { x: gx - 3, y: Y(est.mean) - 3, width: 6, height: 6, fill: "white" }, pg);
    }
  });
  // legend
  const tiered = Boolean(c.tiers);
  const items = [["lru", tiered ? "LRU total" : "LRU model", ""], ["fifo", tiered ? "FIFO total" : "FIFO model", ""],
    ["seed", tiered ? "seed (GPU only)" : "seed model (same capacity)", "6 4"]]
    .filter(([name]) => (name === "seed" && c.seed) || models.includes(name));
  let lx = 60;
  const ly = H - 10;
  for (const [name, label, dash] of items) {
    el("line", { x1: lx, x2: lx + 22, y1: ly - 4, y2: ly - 4, stroke: COLORS[name], "stroke-width": 2.5, "stroke-dasharray": dash }, svg);
    el("text", { x: lx + 28, y: ly, class: "legend" }, svg, label);
    lx += 40 + label.length * 6.4;
  }
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
  el("line", { x1: lx, x2: lx, y1: ly - 10, y2: ly + 2, class: "here" }, svg);
  el("text", { x: lx + 6, y: ly, class: "legend" }, svg, "now");
  lx += 46;
  if (sims.length) {
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

// ------------------------------------------------------------------ simulation

function simStatus(text, cls = "") {
  const s = $("#sim-status");
  s.textContent = text;
  s.className = cls;
}

async function startSimulation() {
  if (!current) return;
  const params = current.params;
  const { status, body } = await fetchJson("/api/simulate", params);
  if (status === 202) {
    simKey = JSON.stringify(params);
    simPoints = [];
    simStatus(`simulating: 0 of ${body.total} runs…`, "busy");
    $("#simulate").disabled = true;
    pollSimulation();
  } else if (status === 409) {
    simStatus(body.error, "refused");
  } else if (status === 400) {
    showErrors(body);
  } else {
    simStatus(body.error || `server error ${status}`, "refused");
  }
}

async function pollSimulation() {
  clearTimeout(simTimer);
  let s;
  try {
    s = await (await fetch("/api/simulate")).json();
  } catch (e) {
    simStatus(`lost the server: ${e.message}`, "refused");
    $("#simulate").disabled = false;
    return;
  }
  if (s.params && JSON.stringify(s.params) === simKey) simPoints = s.points;
  const shown = current && simKey === current.key;
  const where = shown ? "" : " (for earlier inputs: not drawn)";
  if (s.state === "running") {
    simStatus(`simulating: ${s.done} of ${s.total} runs (${(s.elapsed_s || 0).toFixed(0)} s)${where}`, "busy");
    simTimer = setTimeout(pollSimulation, 500);
  } else {
    $("#simulate").disabled = false;
    if (s.state === "done") {
      const st = s.settings;
      simStatus(`simulated ${s.total} runs in ${s.elapsed_s.toFixed(1)} s: ${st.replications} replications of ` +
        `${num(st.duration)} s (warm-up ${num(st.warmup)} s); squares are means, bars 95% CIs${where}`, "done");
    } else if (s.state === "error") {
      simStatus(s.error, "refused");
    }
  }
  drawChart();
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
  $("#simulate").addEventListener("click", startSimulation);
  const s = await (await fetch("/api/simulate")).json();
  if (s.state === "running") { simKey = JSON.stringify(s.params); pollSimulation(); }
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
