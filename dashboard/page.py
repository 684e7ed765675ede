"""The dashboard page: one HTML document, plotly.js from /static, live data from /api/state and /stream.

What an operator looks at first comes first (issue 14 §2). The page re-reads ``/api/state`` when a
frame says something changed (at most once a second) and every 5 s for the ages; ``equity.update``
frames extend the equity curve directly. Element ids are what tests/test_dashboard_browser.py reads.
"""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>steadyhand</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script src="/static/plotly.min.js"></script>
<style>
 body{font:14px/1.35 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
 header{display:flex;gap:1.2em;flex-wrap:wrap;align-items:center;padding:.6em 1em;background:#1d232b;color:#fff}
 header b{font-size:1.1em} .pill{padding:.1em .6em;border-radius:1em;background:#3a4450}
 .ok{background:#1f7a3d}.warn{background:#b36b00}.bad{background:#b3261e}
 main{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:.8em;padding:.8em}
 section{background:#fff;border-radius:6px;padding:.6em .8em;box-shadow:0 1px 2px #0002;overflow:auto}
 h2{font-size:1em;margin:.1em 0 .5em} table{border-collapse:collapse;width:100%;font-size:13px}
 td,th{padding:.15em .4em;text-align:left;border-bottom:1px solid #eee;white-space:nowrap} td.n{text-align:right}
 section.wide{grid-column:span 2} section.tall{max-height:22em}
 #controls button{margin:.1em .2em;padding:.3em .8em} #btn-halt,#btn-flatten{background:#b3261e;color:#fff}
 #log-tail{font:12px monospace;white-space:pre-wrap;max-height:16em;overflow:auto}
 .pos{color:#1f7a3d}.neg{color:#b3261e}
</style></head><body>
<header>
 <b>steadyhand</b>
 <span id="alive" class="pill">…</span>
 <span id="trading-state" class="pill">…</span>
 <span id="circuit" class="pill">circuit …</span>
 <span id="feed" class="pill">feed …</span>
 <span id="market" class="pill">market …</span>
 <span id="controls">
  <button id="btn-pause">pause</button><button id="btn-resume">resume</button>
  <button id="btn-cancel-all">cancel all</button><button id="btn-halt">HALT</button>
  <button id="btn-flatten">FLATTEN</button></span>
 <span id="command-result"></span>
</header>
<main>
 <section><h2>Actors</h2><table><thead><tr><th>actor</th><th>pid</th><th>restarts</th><th>heartbeat</th>
  </tr></thead><tbody id="actors"></tbody></table></section>
 <section><h2>Equity <span id="equity-now"></span> · day <span id="day-pnl"></span></h2>
  <div id="equity-chart" style="height:260px"></div></section>
 <section><h2>Positions</h2><table><thead><tr><th>symbol</th><th>qty</th><th>avg cost</th><th>last</th>
  <th>unrealized</th></tr></thead><tbody id="positions"></tbody></table></section>
 <section><h2>Open orders</h2><table><thead><tr><th>client order id</th><th>side</th><th>qty</th><th>symbol</th>
  <th>type</th><th>status</th></tr></thead><tbody id="open-orders"></tbody></table></section>
 <section class="wide tall"><h2>Recent fills</h2><table><thead><tr><th>time</th><th>client order id</th>
  <th>side</th><th>qty</th><th>symbol</th><th>price</th><th>slippage bps</th></tr></thead>
  <tbody id="fills"></tbody></table></section>
 <section><h2>Risk limits</h2><table><tbody id="limits"></tbody></table></section>
 <section><h2>Alerts</h2><table><tbody id="alerts"></tbody></table></section>
 <section><h2>Log tail</h2><div id="log-tail"></div></section>
 <section><h2>Last reconciliation</h2><div id="reconciliation"></div></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"]/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const money = (v, signed) => v === null || v === undefined ? "n/a" :
  (signed && v >= 0 ? "+" : "") + v.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
const cls = (v) => v > 0 ? "pos" : v < 0 ? "neg" : "";
const ago = (s) => s === null || s === undefined ? "n/a" : s < 90 ? s.toFixed(1) + " s" : (s / 60).toFixed(0) + " min";
let chartReady = false, refreshTimer = null, lastEquityTs = "";

function pill(id, text, kind) { const e = $(id); e.textContent = text; e.className = "pill " + (kind || ""); }

function render(s) {
  pill("alive", "alive since " + (s.alive.since || "?").slice(0, 19).replace("T", " "), "ok");
  const st = s.trading.state;
  pill("trading-state", st.toUpperCase() + (s.trading.halt_reason ? " (" + s.trading.halt_reason + ")" : ""),
       st === "active" ? "ok" : st === "halted" ? "bad" : "warn");
  pill("circuit", "circuit " + (s.trading.circuit.open ? "OPEN" : "closed"), s.trading.circuit.open ? "bad" : "ok");
  const f = s.trading.feed;
  pill("feed", "feed " + (f.stale ? "STALE " : "") +
       (f.age_s === null ? "n/a" : f.age_s.toFixed(0) + " s old (run clock)"), f.stale ? "bad" : "ok");
  const m = s.trading.market;
  pill("market", "market " + (m.open ? "open, closes in " : "closed, opens in ") + ago(m.in_s), m.open ? "ok" : "");
  $("actors").innerHTML = Object.entries(s.actors).map(([n, a]) =>
    `<tr><td>${esc(n)}</td><td class="n">${a.pid}</td><td class="n">${a.restarts}</td>` +
    `<td class="${a.alive ? "" : "neg"}">${a.alive ? ago(a.heartbeat_age_s) : "DOWN"}</td></tr>`).join("");
  $("equity-now").textContent = money(s.equity.equity);
  $("day-pnl").textContent = money(s.equity.day_pnl, true);
  $("day-pnl").className = cls(s.equity.day_pnl);
  drawCurve(s.equity.curve);
  $("positions").innerHTML = Object.entries(s.positions).map(([sym, p]) =>
    `<tr><td>${esc(sym)}</td><td class="n">${p.qty}</td><td class="n">${money(p.avg_cost)}</td>` +
    `<td class="n">${money(p.last_price)}</td>` +
    `<td class="n ${cls(p.unrealized_pnl)}">${money(p.unrealized_pnl, true)}</td></tr>`
  ).join("") || "<tr><td>flat</td></tr>";
  $("open-orders").innerHTML = s.open_orders.map((o) =>
    `<tr><td>${esc(o.client_order_id)}</td><td>${esc(o.side)}</td><td class="n">${o.qty}</td>` +
    `<td>${esc(o.symbol)}</td>` +
    `<td>${esc(o.type)}</td><td>${esc(o.status)}</td></tr>`).join("") || "<tr><td>none</td></tr>";
  $("fills").innerHTML = s.fills.map((x) =>
    `<tr data-fill-id="${esc(x.fill_id)}"><td>${esc(x.ts).slice(11, 19)}</td><td>${esc(x.client_order_id)}</td>` +
    `<td>${esc(x.side)}</td><td class="n">${x.qty}</td><td>${esc(x.symbol)}</td><td class="n">${x.price}</td>` +
    `<td class="n">${esc(x.slippage_bps)}</td></tr>`).join("");
  $("limits").innerHTML = Object.entries(s.risk_limits).map(([k, u]) =>
    `<tr><td>${esc(k.replace("max_", ""))}</td><td class="n">${u.used ?? "n/a"} / ${u.limit}</td>` +
    `<td class="n">${u.pct === null ? "n/a" : u.pct + " %"}</td></tr>`).join("");
  $("alerts").innerHTML = s.alerts.map((a) =>
    `<tr><td>${esc(a.severity)}</td><td>${esc(a.title)}</td><td>${esc(a.created_at).slice(0, 19)}</td><td>` +
    (a.needs_ack ? `<button class="ack" data-alert-id="${a.id}">acknowledge</button>` : (a.acked_at ? "acked" : "")) +
    "</td></tr>").join("") || "<tr><td>none</td></tr>";
  const tail = $("log-tail");
  tail.textContent = s.log_tail.map((e) => e.text).join("\\n");
  tail.scrollTop = tail.scrollHeight;
  const r = s.reconciliation;
  $("reconciliation").textContent = r ? `${r.finished_at || ""} (${r.reason || ""}): ${r.orders_checked ?? 0} ` +
    `orders checked, ${r.fills_recovered ?? 0} fills recovered. ` + (r.lines || []).join("; ") : "none yet";
}

function drawCurve(curve) {
  const x = curve.map((p) => p[0]), y = curve.map((p) => p[1]);
  lastEquityTs = x.length ? x[x.length - 1] : "";
  const layout = {margin: {l: 60, r: 10, t: 10, b: 30}, xaxis: {type: "date"}, yaxis: {tickformat: ",.2f"}};
  if (!chartReady) {
    Plotly.newPlot("equity-chart", [{x, y, mode: "lines", name: "equity"}], layout, {displayModeBar: false});
    chartReady = true;
  } else {
    Plotly.react("equity-chart", [{x, y, mode: "lines", name: "equity"}], layout);
  }
}

async function refresh() {
  refreshTimer = null;
  const r = await fetch("/api/state", {credentials: "same-origin"});
  if (r.ok) render(await r.json());
}
function soon() { if (!refreshTimer) refreshTimer = setTimeout(refresh, 1000); }  // at most one a second

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/stream");
  ws.onmessage = (msg) => {
    const f = JSON.parse(msg.data);
    if (f.stage === "equity.update" && chartReady && f.bar_ts > lastEquityTs) {
      Plotly.extendTraces("equity-chart", {x: [[f.bar_ts]], y: [[f.equity]]}, [0]);
      lastEquityTs = f.bar_ts;
      $("equity-now").textContent = money(f.equity);
    } else if (f.stage !== "bar.received" && f.stage !== "equity.update") {
      soon();
    }
  };
  ws.onclose = () => setTimeout(connect, 2000);
}

async function command(name, args) {
  if ((name === "halt" || name === "flatten") &&
      !confirm(name === "halt" ? "HALT: cancel every open order and stop trading?"
                               : "FLATTEN: cancel open orders, close every position, then halt?")) return;
  const r = await fetch("/api/command", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({name, args: args || {}, confirm: true})});
  const body = await r.json();
  $("command-result").textContent = name + ": " + (body.ok ? "ok" : body.error);
  soon();
}
for (const name of ["pause", "resume", "cancel-all", "halt", "flatten"])
  $("btn-" + name).onclick = () => command(name);
$("alerts").onclick = (e) => { const id = e.target.dataset && e.target.dataset.alertId;
  if (id) command("ack", {alert_id: Number(id)}); };

refresh(); connect(); setInterval(refresh, 5000);
</script></body></html>
"""
