"""``GET /``: the status page for a person. Self-contained (inline CSS, script and SVG, no
network but this server's API): it draws from ``/v1/status`` and ``/v1/history`` and
refreshes itself. The HTML holds no data, so it is served without the token; the script sends
the token from the URL fragment (``/#token=...``) or the form it shows on a 401."""

from __future__ import annotations

REFRESH_MS = 3000
# The page may talk to this server only: no CDN, no other host.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:; form-action 'none'; base-uri 'none'")

STYLE = """
:root { --fg: #1d2430; --muted: #5b6678; --line: #d9dee7; --card: #fff; --bg: #f3f5f9;
  --blue: #2563eb; --green: #16a34a; --orange: #ea580c; --red: #dc2626; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
header { padding: 14px 24px; background: #1d2430; color: #fff; display: flex;
  align-items: baseline; gap: 18px; flex-wrap: wrap; }
header h1 { font-size: 20px; margin: 0; }
header span { color: #c8d0dc; font-size: 14px; }
main { padding: 18px 24px; max-width: 1200px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.card, .panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; }
.card .k { color: var(--muted); font-size: 13px; }
.card .v { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .s { color: var(--muted); font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px;
  margin-top: 12px; }
.panel h2 { font-size: 15px; margin: 0 0 6px; }
.panel .note { color: var(--muted); font-size: 13px; }
svg.chart { width: 100%; height: 190px; display: block; }
svg text { font-size: 11px; fill: var(--muted); }
.bar { height: 18px; background: #e8ebf1; border-radius: 4px; position: relative;
  overflow: hidden; margin: 6px 0; }
.bar div { height: 100%; background: var(--green); }
.bar div.over { background: var(--red); }
.chips { display: flex; flex-wrap: wrap; gap: 6px; max-height: 140px; overflow: auto; }
.chips span { background: #e8eefc; color: #1e3a8a; border-radius: 12px; padding: 1px 9px;
  font-size: 13px; }
#banner { display: none; margin-bottom: 12px; padding: 8px 12px; border-radius: 6px;
  background: #fde8e8; color: #7f1d1d; }
#auth { display: none; }
#auth input { font: inherit; padding: 4px 8px; width: 320px; max-width: 100%; }
#auth button { font: inherit; padding: 4px 12px; }
"""

BODY = """
<header><h1>edgecl learner</h1>
<span id="summary">connecting…</span><span id="updated"></span></header>
<main>
<div id="banner"></div>
<form id="auth" class="panel"><h2>This learner needs a token</h2>
<p class="note">No data is shown without it. Open the page as
<code>/#token=&lt;token&gt;</code> or enter it here (it stays in this tab).</p>
<input id="token" type="password" autocomplete="off" placeholder="token">
<button type="submit">Show</button></form>
<div id="data">
<div class="cards">
<div class="card"><div class="k">Samples stored</div><div class="v" id="samples">–</div>
<div class="s" id="samples-sub">&nbsp;</div></div>
<div class="card"><div class="k">Classes</div><div class="v" id="classes">–</div>
<div class="s" id="tasks">&nbsp;</div></div>
<div class="card"><div class="k">Model version</div><div class="v" id="model-version">–</div>
<div class="s" id="method">&nbsp;</div></div>
<div class="card"><div class="k">Training steps</div><div class="v" id="train-steps">–</div>
<div class="s" id="training">&nbsp;</div></div>
<div class="card"><div class="k">Queue (untrained)</div><div class="v" id="queue">–</div>
<div class="s">samples</div></div>
<div class="card"><div class="k">Last checkpoint</div><div class="v" id="checkpoint">–</div>
<div class="s" id="checkpoint-sub">&nbsp;</div></div>
</div>
<div class="grid">
<div class="panel"><h2>Samples over time</h2><svg class="chart" id="samples-chart"></svg></div>
<div class="panel"><h2>Classes over time</h2><svg class="chart" id="classes-chart"></svg></div>
<div class="panel"><h2>Held-out accuracy over time</h2>
<svg class="chart" id="accuracy-chart"></svg><div class="note" id="accuracy-note"></div></div>
<div class="panel"><h2>Memory</h2><div id="memory">–</div>
<div class="bar"><div id="memory-bar" style="width:0"></div></div>
<svg class="chart" id="memory-chart"></svg>
<div class="note">resident set size since this page opened; dashed: the budget</div></div>
<div class="panel"><h2>Class names</h2><div class="chips" id="class-list"></div></div>
</div></div></main>
"""

SCRIPT = """
const REFRESH_MS = __REFRESH_MS__, NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const memory = [];
let token = tokenFromHash(), timer = null;
class AuthNeeded extends Error {}

function tokenFromHash() {
  const h = decodeURIComponent(location.hash.slice(1));
  return h.startsWith("token=") ? h.slice(6) : h;
}
async function get(path) {
  const headers = token ? {Authorization: "Bearer " + token} : {};
  const r = await fetch(path, {headers, cache: "no-store"});
  if (r.status === 401) throw new AuthNeeded();
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function text(id, value) { $(id).textContent = value; }
function fmt(n) { return Number(n).toLocaleString("en-US"); }
function clock(t) { return new Date(t * 1000).toLocaleTimeString("en-GB"); }
function el(parent, name, attrs, content) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (content !== undefined) node.textContent = content;
  parent.appendChild(node);
  return node;
}
// A step/line chart of points [[time, value], ...]; dashed horizontal line at `limit`.
function chart(svg, points, opts) {
  svg.replaceChildren();
  const W = svg.clientWidth || 520, H = svg.clientHeight || 190;
  const L = opts.left || 40, R = 12, T = 10, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  if (!points.length) {
    el(svg, "text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, opts.empty || "no data yet");
    return;
  }
  const t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1);
  const top = opts.max ?? nice(Math.max(...points.map((p) => p[1]), opts.limit ?? 0) * 1.05);
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  el(svg, "line", {x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#c3cad6"});
  el(svg, "line", {x1: L, y1: T, x2: L, y2: y(0), stroke: "#c3cad6"});
  for (const v of [0, top / 2, top]) {
    el(svg, "text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, opts.tick(v));
  }
  el(svg, "text", {x: L, y: H - 6}, clock(t0));
  el(svg, "text", {x: W - R, y: H - 6, "text-anchor": "end"}, clock(t1));
  if (opts.limit) {
    el(svg, "line", {x1: L, y1: y(opts.limit), x2: W - R, y2: y(opts.limit),
                     stroke: "#dc2626", "stroke-dasharray": "5 4"});
  }
  const d = points.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + " " +
                       y(p[1]).toFixed(1)).join(" ");
  el(svg, "path", {d, fill: "none", stroke: opts.color, "stroke-width": 2});
  const last = points[points.length - 1];
  el(svg, "circle", {cx: x(last[0]), cy: y(last[1]), r: 3.5, fill: opts.color});
}
const count = (v) => Number.isInteger(v) ? fmt(v) : v.toFixed(1);
// The smallest of 1, 2, 2.5, 5 x 10^k at or above v: round axis labels.
function nice(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((c) => c >= v);
}
function duration(s) {
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function render(s, h) {
  const now = Date.now() / 1000;
  text("samples", fmt(s.samples_stored));
  text("samples-sub", fmt(s.samples_trained ?? 0) + " fed to training");
  text("classes", fmt(s.classes.length));
  text("tasks", fmt(s.tasks ?? 0) + " tasks trained");
  text("model-version", s.model_version);
  text("method", s.method || "");
  text("train-steps", fmt(s.train_steps));
  text("training", s.training ? "training now" : "idle");
  text("queue", fmt(s.queue));
  const cp = s.last_checkpoint;
  text("checkpoint", cp ? "v" + cp.version : "none");
  text("checkpoint-sub", cp ? "at " + clock(cp.time) : "not written yet");
  text("summary", `${fmt(s.samples_stored)} samples · ${s.classes.length} classes · ` +
       `model v${s.model_version} · up ${duration(s.uptime_s ?? 0)}`);
  text("updated", "updated " + clock(now));
  const m = s.memory, budget = m.budget_mib, peak = Math.max(m.peak_rss_mib ?? 0, m.rss_mib);
  text("memory", `${m.rss_mib.toFixed(1)} MiB resident` + (budget ? ` of ${budget} MiB budget`
       : " (no budget set)") + ` · peak ${peak.toFixed(1)} MiB`);
  const full = budget || peak;
  $("memory-bar").style.width = Math.min(100, 100 * m.rss_mib / full) + "%";
  $("memory-bar").className = budget && m.rss_mib > budget ? "over" : "";
  memory.push([now, m.rss_mib]);
  if (memory.length > 600) memory.shift();
  chart($("memory-chart"), memory, {color: "#ea580c", limit: budget, left: 62,
        tick: (v) => v.toFixed(0) + " MiB"});
  const samples = h.samples.map((p) => [p.time, p.samples]);
  const classes = h.samples.map((p) => [p.time, p.classes]);
  if (samples.length) {
    samples.push([now, s.samples_stored]);
    classes.push([now, s.classes.length]);
  }
  chart($("samples-chart"), samples, {color: "#2563eb", tick: count});
  chart($("classes-chart"), classes, {color: "#16a34a", tick: count});
  const acc = h.accuracy.filter((a) => a.accuracy !== null && isFinite(a.accuracy))
                .map((a) => [a.time, a.accuracy]);
  chart($("accuracy-chart"), acc, {color: "#7c3aed", max: 100, tick: (v) => v + "%", left: 44,
        empty: "no evaluation yet"});
  const lastAcc = acc.length ? acc[acc.length - 1][1].toFixed(1) + "% on the seen classes" : "";
  text("accuracy-note", lastAcc || "Shown when an evaluation set is configured " +
       "(eval.dataset in the learner config).");
  $("class-list").replaceChildren(...s.classes.map((name) => {
    const chip = document.createElement("span");
    chip.textContent = name;
    return chip;
  }));
}

async function refresh() {
  try {
    const [s, h] = await Promise.all([get("v1/status"), get("v1/history")]);
    render(s, h);
    $("auth").style.display = "none";
    $("data").style.display = "";
    $("banner").style.display = "none";
    document.body.dataset.state = "live";
  } catch (e) {
    if (e instanceof AuthNeeded) {
      $("auth").style.display = "block";
      $("data").style.display = "none";
      text("summary", "token needed");
      document.body.dataset.state = "auth";
    } else {
      $("banner").style.display = "block";
      text("banner", "learner unreachable: " + e.message + " (retrying)");
      document.body.dataset.state = "error";
    }
  }
  clearTimeout(timer);
  timer = setTimeout(refresh, REFRESH_MS);
}
$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  history.replaceState(null, "", "#token=" + encodeURIComponent(token));
  refresh();
});
window.addEventListener("hashchange", () => { token = tokenFromHash(); });
refresh();
""".replace("__REFRESH_MS__", str(REFRESH_MS))

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgecl learner</title>
<meta name="referrer" content="no-referrer">
<style>{STYLE}</style></head>
<body data-state="loading">{BODY}
<script>{SCRIPT}</script>
</body></html>
"""
