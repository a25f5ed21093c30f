// pyro-compute dashboard: polls /api/history and /api/runs every second and redraws; no reloads.
"use strict";

const PREFIX = "pyro_compute.evaluator.";
const REFRESH_MS = 500;  // the server polls the cluster once a second; show each poll promptly
const STREAM_SECONDS = 60;
const $ = (id) => document.getElementById(id);

function si(x, unit) {
  if (typeof x !== "number" || !isFinite(x)) return "–";
  const steps = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, prefix] of steps) if (Math.abs(x) >= size) return (x / size).toFixed(2) + " " + prefix + unit;
  return x.toFixed(x >= 10 || x === 0 ? 0 : 2) + " " + unit;
}

function isDecade(v) {
  return v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9;
}

function duration(seconds) {
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h + ":" + String(m).padStart(2, "0") + ":" + String(s % 60).padStart(2, "0");
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function busyCell(row, share) {
  const td = row.insertCell(), bar = document.createElement("span"), fill = document.createElement("i");
  bar.className = "busy";
  fill.style.width = (100 * share).toFixed(0) + "%";
  bar.appendChild(fill);
  td.append(bar, " " + (100 * share).toFixed(0) + " %");
}

function renderWorkers(workers) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const w of workers) {
    const row = body.insertRow();
    row.dataset.name = w.name;
    cell(row, w.name.startsWith(PREFIX) ? w.name.slice(PREFIX.length) : w.name);
    if (!w.reachable) {
      row.className = "unreachable";
      row.title = w.error || "";
      cell(row, "–");
      cell(row, "unreachable");
      const td = cell(row, w.error || "");
      td.colSpan = 5;
      td.style.textAlign = "left";
      continue;
    }
    const busy = w.busy_share || 0;
    cell(row, w.host);
    cell(row, busy > 0.05 ? "busy" : "idle", busy > 0.05 ? "state-busy" : "state-idle");
    busyCell(row, busy);
    cell(row, (w.tasks_per_second || 0).toFixed(1));
    cell(row, si(w.samples_per_second_window || 0, ""));
    cell(row, w.in_flight === undefined ? "–" : String(w.in_flight));
    cell(row, duration(w.uptime));
  }
  const down = workers.filter((w) => !w.reachable).length;
  $("worker-count").textContent = "(" + workers.length + (down ? ", " + down + " unreachable" : "") + ")";
}

function makeChart(el, opts, data) {
  return new uPlot(Object.assign({ width: Math.min(1100, window.innerWidth - 60), height: 240 }, opts), data, el);
}

const throughput = makeChart($("tp-chart"), {
  title: "Cluster throughput",
  scales: { x: { time: true }, tasks: { auto: true } },
  axes: [
    { label: "time" },
    { label: "samples / s", values: (u, vals) => vals.map((v) => si(v, "")), size: 70 },
    { label: "tasks / s", scale: "tasks", side: 1, grid: { show: false } },
  ],
  series: [{}, { label: "samples/s", stroke: "#2a8", fill: "rgba(34,170,136,0.15)", width: 2 },
           { label: "tasks/s", scale: "tasks", stroke: "#36c", width: 1, dash: [5, 3] }],
}, [[], [], []]);

const piChart = makeChart($("pi-chart"), {
  width: 540, height: 220, legend: { show: false },
  scales: { x: { time: false, distr: 3, log: 10 } },
  axes: [{ label: "samples (log scale)", values: (u, vals) => vals.map((v) => isDecade(v) ? si(v, "") : "") },
         { label: "π", size: 80 }],
  series: [{ label: "samples" }, { label: "estimate", stroke: "#c33", width: 2 },
           { label: "95 % low", stroke: "#c99", dash: [4, 4] }, { label: "95 % high", stroke: "#c99", dash: [4, 4] },
           { label: "π", stroke: "#888", width: 1 }],
  bands: [{ series: [3, 2], fill: "rgba(204,51,51,0.12)" }],
}, [[], [], [], [], []]);

function renderThroughput(series) {
  throughput.setData([series.t, series.samples_per_second, series.tasks_per_second]);
  const last = series.samples_per_second.length ? series.samples_per_second[series.samples_per_second.length - 1] : 0;
  $("tp-now").textContent = "now " + si(last, "samples/s");
}

function laneColour(label) {
  let h = 0;
  for (const c of label) h = (h * 31 + c.charCodeAt(0)) % 360;
  return "hsl(" + h + ",60%,50%)";
}

function renderStream(tasks, now) {
  const canvas = $("task-stream"), ctx = canvas.getContext("2d");
  const lanes = [...new Set(tasks.map((t) => t.worker))].sort();
  window.pcDash.lanes = lanes;
  const left = 150, width = canvas.width - left - 10, laneH = Math.max(8, Math.min(30, (canvas.height - 20) / Math.max(1, lanes.length)));
  const x = (t) => left + width * (1 - (now - t) / STREAM_SECONDS);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#444";
  lanes.forEach((lane, i) => ctx.fillText(lane.replace(PREFIX, "").slice(0, 22), 4, 14 + i * laneH + laneH / 2));
  for (const t of tasks) {
    const i = lanes.indexOf(t.worker), x0 = Math.max(left, x(t.start)), x1 = x(t.end);
    if (x1 < left) continue;
    ctx.fillStyle = laneColour(t.label || "task");
    ctx.fillRect(x0, 6 + i * laneH, Math.max(1, x1 - x0 - 1), laneH - 3);
  }
  ctx.fillStyle = "#888";
  ctx.fillText("−" + STREAM_SECONDS + " s", left, canvas.height - 3);
  ctx.fillText("now", canvas.width - 30, canvas.height - 3);
}

function count(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "–";
}

// One line of words for a run: its own measure of progress, then the pool's task counts.
function runCounts(run, now) {
  const parts = [], p = run.progress, c = run.counts;
  if (p) parts.push("done " + count(p.done) + (p.total !== null ? " of " + count(p.total) +
                    " (" + (100 * Math.min(1, p.done / Math.max(1, p.total))).toFixed(1) + " %)" : ""));
  if (c) {
    parts.push((p ? "tasks: " : "") + "done " + count(c.done));
    // A finished run's last counts may still hold tasks of a map abandoned half-way (cancelled).
    if (c.queued !== null && !run.finished) parts.push("queued " + count(c.queued));
    if (c.running !== null && !run.finished) parts.push("running " + count(c.running));
  }
  if (!(p && p.total !== null) && !run.finished && (p || c)) parts.push("total unknown");
  parts.push(count(run.task_count) + " calls reported");
  return parts.join(" · ");
}

function renderRunRow(box, run, now) {
  const div = document.createElement("div"), h = document.createElement("h3"), state = document.createElement("span");
  div.className = "run";
  div.dataset.id = run.id;
  h.textContent = run.title + " ";
  state.className = "state";
  state.textContent = run.finished ? "(finished)" : "(running)";
  h.append(state);
  const bar = document.createElement("div"), fill = document.createElement("i");
  const p = run.progress, known = p && p.total !== null;
  bar.className = "progress" + (known || run.finished ? "" : " unknown");
  fill.style.width = known ? (100 * Math.min(1, p.done / Math.max(1, p.total))).toFixed(1) + "%" : run.finished ? "100%" : "";
  bar.append(fill);
  const text = document.createElement("p");
  text.className = "counts";
  text.textContent = runCounts(run, now);
  if (!run.finished && now - run.updated > 5) {
    const stale = document.createElement("span");
    stale.className = "stale";
    stale.textContent = " · last report " + Math.round(now - run.updated) + " s ago";
    text.append(stale);
  }
  if (run.dropped) {
    const lost = document.createElement("span");
    lost.className = "dropped";
    lost.textContent = " · " + count(run.dropped) + " reports dropped on the way";
    text.append(lost);
  }
  div.append(h, bar, text);
  box.append(div);
}

function renderPi(runs) {
  const withPi = runs.filter((r) => r.pi.length);
  $("pi-panel").hidden = !withPi.length;
  if (!withPi.length) return;
  const run = withPi.find((r) => !r.finished) || withPi[withPi.length - 1], last = run.pi[run.pi.length - 1];
  $("pi-value").textContent = last.estimate.toFixed(8);
  $("pi-interval").textContent = "95 % in [" + last.low.toFixed(8) + ", " + last.high.toFixed(8) + "] after " + si(last.samples, "samples");
  piChart.setData([run.pi.map((q) => q.samples), run.pi.map((q) => q.estimate), run.pi.map((q) => q.low),
                   run.pi.map((q) => q.high), run.pi.map(() => Math.PI)]);
}

function renderRuns(runs, now) {
  $("run-view").hidden = !runs.length;
  if (!runs.length) return;
  const box = $("runs");
  box.replaceChildren();
  for (const run of runs) renderRunRow(box, run, now);
  $("run-count").textContent = "(" + runs.length + ")";
  window.pcDash.runs = runs.map((r) => ({ id: r.id, title: r.title, counts: runCounts(r, now), finished: r.finished }));
  renderPi(runs);
  renderStream(runs.flatMap((r) => r.tasks), now);
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

async function refresh() {
  try {
    const history = await getJSON("/api/history");
    const runs = await getJSON("/api/runs?since=" + (history.now - STREAM_SECONDS));
    renderWorkers(history.workers);
    renderThroughput(history.series);
    renderRuns(runs.runs, history.now);
    $("error").hidden = !history.error;
    $("error").textContent = history.error || "";
    $("updated").textContent = "updated " + new Date(history.now * 1000).toLocaleTimeString();
    window.pcDash.updates += 1;
  } catch (e) {
    $("error").hidden = false;
    $("error").textContent = "dashboard unreachable: " + e.message;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

// For tests and curious users: the charts and how many refreshes have landed.
window.pcDash = { throughput, piChart, updates: 0, lanes: [], runs: [] };
refresh();
