"""The live page of ``edgesplit serve`` (``GET /``): one self-contained HTML document, no CDN,
no external file, so it works offline. It polls ``/v1/cluster`` every second (device table,
throughput, p50/p99, the plan's stages) and classifies dropped or chosen images through
``/v1/classify``. Element ids (``devices``, ``plan``, ``throughput``, ``p50``, ``p99``,
``drop``, ``file``, ``result``) are what the browser test reads."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>edgesplit serve</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.3em; margin: 0 0 .3em; }
 .cards { display: flex; gap: 1em; margin: .8em 0; flex-wrap: wrap; }
 .card { border: 1px solid #ccc; border-radius: 6px; padding: .5em 1em; min-width: 9em; }
 .card b { display: block; font-size: 1.5em; }
 table { border-collapse: collapse; margin: .5em 0 1em; }
 th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 .lost { color: #b00; font-weight: bold; } .healthy { color: #070; }
 #drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5em; text-align: center;
         max-width: 32em; cursor: pointer; }
 #drop.over { background: #eef; }
 #result { margin-top: .8em; white-space: pre-wrap; font-family: monospace; }
 #status { color: #666; }
</style>
</head>
<body>
<h1>edgesplit serve <span id="model"></span></h1>
<div id="status">connecting...</div>
<div class="cards">
 <div class="card">throughput<b id="throughput">-</b>img/s</div>
 <div class="card">p50<b id="p50">-</b>ms</div>
 <div class="card">p99<b id="p99">-</b>ms</div>
 <div class="card">served<b id="served">0</b>requests</div>
 <div class="card">queue<b id="queue">0</b>requests</div>
</div>
<h2>Devices</h2>
<table><thead><tr><th>device</th><th>stage</th><th>health</th><th>img/s</th><th>cpu %</th>
<th>MHz</th><th>mem %</th><th>RSS MB</th><th>queue</th></tr></thead>
<tbody id="devices"></tbody></table>
<h2>Plan <span id="epoch"></span></h2>
<table><thead><tr><th>stage</th><th>device</th><th>units [start, end)</th></tr></thead>
<tbody id="plan"></tbody></table>
<div id="adaptive"></div>
<h2>Classify an image</h2>
<div id="drop">Drop a JPEG or PNG here, or click to choose one
 <input id="file" type="file" accept="image/png,image/jpeg" multiple hidden></div>
<div id="result"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (v, d) => (v === null || v === undefined) ? "-" : Number(v).toFixed(d);
function cell(row, text) { const td = document.createElement("td"); td.textContent = text;
  row.appendChild(td); return td; }
async function refresh() {
  try {
    const r = await fetch("/v1/cluster");
    const c = await r.json();
    $("model").textContent = "- " + c.model + " (" + c.engine + ", " + c.input_size + " px)";
    $("status").textContent = c.status === "serving" ? "serving" : ("FAILED: " + c.error);
    $("throughput").textContent = fmt(c.throughput_ips, 1);
    $("p50").textContent = fmt(c.latency_ms.p50, 0);
    $("p99").textContent = fmt(c.latency_ms.p99, 0);
    $("served").textContent = c.served_requests;
    $("queue").textContent = c.queue.requests;
    const devices = $("devices"); devices.textContent = "";
    for (const d of c.devices) {
      const row = document.createElement("tr"); row.dataset.device = d.name;
      cell(row, d.name); cell(row, d.stage === null ? "-" : d.stage);
      const h = cell(row, d.health || "-"); h.className = d.health || "";
      cell(row, fmt(d.throughput_ips, 1)); cell(row, fmt(d.process_cpu_percent, 0));
      cell(row, fmt(d.cpu_freq_mhz, 0)); cell(row, fmt(d.memory_percent, 0));
      cell(row, fmt(d.rss_mb, 0)); cell(row, d.queue_depth === undefined ? "-" : d.queue_depth);
      devices.appendChild(row);
    }
    $("epoch").textContent = "(epoch " + c.plan.epoch + ")";
    const plan = $("plan"); plan.textContent = "";
    for (const s of c.plan.stages) {
      const row = document.createElement("tr");
      cell(row, s.stage); cell(row, s.device);
      cell(row, "[" + s.units[0] + ", " + s.units[1] + ")");
      plan.appendChild(row);
    }
    $("adaptive").textContent = c.adaptive || "";
  } catch (e) { $("status").textContent = "cannot reach the server: " + e; }
}
async function classify(files) {
  const form = new FormData();
  for (const f of files) form.append("image", f, f.name);
  $("result").textContent = "classifying " + files.length + " image(s)...";
  try {
    const r = await fetch("/v1/classify?top_k=3", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) { $("result").textContent = "error " + r.status + ": " + body.error; return; }
    const lines = body.results.map((res, i) => files[i].name + ": " + res.class + "  (" +
      res.top.map(t => t.class + " " + (100 * t.probability).toFixed(1) + "%").join(", ") + ")");
    lines.push("latency " + body.latency_ms.total.toFixed(1) + " ms (queue " +
      body.latency_ms.queue.toFixed(1) + " ms), request " + body.request_id);
    $("result").textContent = lines.join("\\n");
  } catch (e) { $("result").textContent = "request failed: " + e; }
}
const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (e) => {
  if (e.target.files.length) classify(e.target.files); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files); });
refresh(); setInterval(refresh, 1000);
</script>
</body>
</html>
"""
