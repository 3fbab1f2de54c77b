/**
 * The status page's own files, served by lib/dashboard/routes.ts at
 * `<path>/dashboard`, `<path>/dashboard/app.css` and
 * `<path>/dashboard/app.js` (uPlot comes from its npm package). Every URL in
 * them is relative to the page, so the page works under any mount path and
 * behind a reverse proxy that moves it. The script fills the page with
 * textContent only (never markup from the server), so a database id cannot
 * inject anything; it reads the samples of routes.ts's event stream (see
 * DashboardSample in sampler.ts).
 *
 * They are strings rather than files so that the compiled package needs no
 * copy step; the script is plain ES2017 with no backticks, as it sits in a
 * String.raw template.
 */

/** The page. A `token` query parameter is passed on to the event stream. */
export const PAGE_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>sync-coordinator status</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="dashboard/uplot.css">
<link rel="stylesheet" href="dashboard/app.css">
<script src="dashboard/uplot.js" defer></script>
<script src="dashboard/app.js" defer></script>
</head>
<body>
<header>
  <h1>sync-coordinator</h1>
  <span class="tag" id="version" title="version">-</span>
  <span class="tag" id="node" title="cluster node id">single node</span>
  <span class="state" id="state" data-state="connecting">connecting</span>
</header>
<main>
  <section class="cards">
    <div class="card"><div class="label">Uptime</div><div class="value" id="uptime">-</div></div>
    <div class="card"><div class="label">Open databases</div><div class="value" id="open-databases">-</div></div>
    <div class="card"><div class="label">Clients</div><div class="value" id="clients">-</div></div>
    <div class="card"><div class="label">Applies/s</div><div class="value" id="applies-rate">-</div></div>
    <div class="card"><div class="label">Pushes/s</div><div class="value" id="pushes-rate">-</div></div>
    <div class="card"><div class="label">Changes/s</div><div class="value" id="changes-rate">-</div></div>
    <div class="card"><div class="label">Sockets catching up</div><div class="value" id="catching-up">-</div></div>
    <div class="card"><div class="label">Fell behind, <span class="window">recently</span></div><div class="value" id="lagged">-</div></div>
  </section>
  <section class="charts">
    <figure><figcaption>Throughput per second</figcaption><div class="chart" id="rates-chart" data-points="0"></div></figure>
    <figure><figcaption>Latency in ms (p50 and p99 over 10 s)</figcaption><div class="chart" id="latency-chart" data-points="0"></div></figure>
  </section>
  <section class="panels">
    <div class="panel">
      <h2>Latency, last <span id="latency-window">60</span> s</h2>
      <table id="latency">
        <thead><tr><th></th><th>p50</th><th>p90</th><th>p99</th><th>count</th></tr></thead>
        <tbody>
          <tr id="latency-apply"><th>apply</th><td>-</td><td>-</td><td>-</td><td>-</td></tr>
          <tr id="latency-push"><th>push</th><td>-</td><td>-</td><td>-</td><td>-</td></tr>
        </tbody>
      </table>
    </div>
    <div class="panel" id="archive-panel" hidden>
      <h2>S3 archive</h2>
      <dl id="archive">
        <dt>mode</dt><dd id="archive-mode">-</dd>
        <dt>lag</dt><dd id="archive-lag">-</dd>
        <dt>outbox</dt><dd id="archive-outbox">-</dd>
        <dt>pending transactions</dt><dd id="archive-pending">-</dd>
        <dt>last upload</dt><dd id="archive-upload">-</dd>
        <dt>last snapshot</dt><dd id="archive-snapshot">-</dd>
        <dt>restores / evictions</dt><dd id="archive-restores">-</dd>
        <dt>last error</dt><dd id="archive-error">none</dd>
      </dl>
    </div>
    <div class="panel" id="cluster-panel" hidden>
      <h2>Cluster</h2>
      <dl>
        <dt>node</dt><dd id="cluster-node">-</dd>
        <dt>lag (largest)</dt><dd id="cluster-lag">-</dd>
        <dt>open databases</dt><dd id="cluster-open">-</dd>
        <dt>not following</dt><dd id="cluster-broken">-</dd>
      </dl>
      <table id="cluster-databases"><thead><tr><th>database</th><th>lag</th><th>following</th></tr></thead><tbody></tbody></table>
    </div>
    <div class="panel">
      <h2>Errors sent to clients</h2>
      <table id="errors"><thead><tr><th>code</th><th class="window">recently</th><th>since start</th></tr></thead><tbody></tbody></table>
    </div>
    <div class="panel">
      <h2>Refusals by limit</h2>
      <table id="refusals"><thead><tr><th>limit</th><th class="window">recently</th><th>since start</th></tr></thead><tbody></tbody></table>
    </div>
  </section>
  <section class="panel wide">
    <h2>Busiest databases <span class="muted" id="database-count"></span></h2>
    <table id="databases">
      <thead><tr><th>database</th><th>clients</th><th>changes/s</th><th>size on disk</th><th>last write</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
<footer><span id="updated">waiting for the first sample</span></footer>
</body>
</html>
`;

/** The page's style sheet (uPlot's own comes beside it). */
export const PAGE_CSS = String.raw`:root {
  --bg: #f5f6f8; --panel: #fff; --ink: #1c2430; --muted: #667085; --line: #e3e6eb;
  --blue: #2563eb; --green: #16a34a; --purple: #9333ea; --orange: #ea580c; --red: #dc2626;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg);
}
* { box-sizing: border-box; }
body { margin: 0; }
header { display: flex; align-items: center; gap: 10px; padding: 14px 24px; background: #111827; color: #f9fafb; flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0 8px 0 0; font-weight: 600; }
.tag { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #374151; color: #e5e7eb; }
.state { margin-left: auto; font-size: 12px; padding: 2px 10px; border-radius: 10px; background: #92400e; color: #fff; }
.state[data-state="live"] { background: #15803d; }
.state[data-state="reconnecting"] { background: #b91c1c; }
main { padding: 16px 24px; display: grid; gap: 16px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(132px, 1fr)); gap: 12px; }
.card, .panel, figure { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; }
.card { padding: 10px 14px; }
.card .label { font-size: 12px; color: var(--muted); }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; margin-top: 2px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
figure { margin: 0; padding: 10px 12px; min-width: 0; }
figcaption { font-size: 13px; color: var(--muted); margin-bottom: 6px; }
.chart { width: 100%; min-height: 230px; }
.panels { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 16px; align-items: start; }
.panel { padding: 10px 14px; min-width: 0; }
.panel h2 { font-size: 14px; margin: 0 0 8px; font-weight: 600; }
.muted { color: var(--muted); font-weight: 400; }
table { width: 100%; border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: 4px 6px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
td:first-child { overflow: hidden; text-overflow: ellipsis; max-width: 320px; }
thead th { color: var(--muted); font-weight: 500; }
tbody th { font-weight: 500; }
td.empty { color: var(--muted); text-align: left; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 4px 12px; margin: 0 0 8px; font-size: 13px; }
dt { color: var(--muted); }
dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
dd.bad { color: var(--red); }
footer { padding: 8px 24px 16px; font-size: 12px; color: var(--muted); }
`;

/** The page's script: the event stream, the figures and the two uPlot charts. */
export const PAGE_SCRIPT = String.raw`(function () {
  'use strict';
  var token = new URLSearchParams(location.search).get('token');
  var eventsUrl = 'dashboard/events' + (token ? '?token=' + encodeURIComponent(token) : '');
  var info = null;
  var series = null;
  var charts = {};
  var windowText = '';

  function byId(id) { return document.getElementById(id); }
  function setText(el, text) { if (typeof el === 'string') el = byId(el); if (el && el.textContent !== text) el.textContent = text; }
  function number(n, digits) {
    if (n === null || n === undefined || isNaN(n)) return '-';
    var d = digits === undefined ? (Math.abs(n) >= 100 || n === Math.round(n) ? 0 : 1) : digits;
    return n.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
  }
  function ms(n) {
    if (n === null || n === undefined) return '-';
    return n >= 1000 ? number(n / 1000, 2) + ' s' : number(n, n < 10 ? 2 : n < 100 ? 1 : 0) + ' ms';
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '-';
    var s = Math.floor(seconds);
    var d = Math.floor(s / 86400); var h = Math.floor(s % 86400 / 3600); var m = Math.floor(s % 3600 / 60);
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + m + 'm';
    if (m > 0) return m + 'm ' + (s % 60) + 's';
    return (seconds < 10 ? number(seconds, 1) : String(s)) + ' s';
  }
  function bytes(n) {
    if (n === null || n === undefined) return '-';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1024; i++; }
    return number(n, i === 0 ? 0 : 1) + ' ' + units[i];
  }
  function ago(at, now) {
    if (!at) return '-';
    return now - at < 1000 ? 'just now' : duration((now - at) / 1000) + ' ago';
  }
  function span(seconds) {
    return seconds % 60 === 0 ? (seconds / 60) + ' min' : duration(seconds);
  }

  /** Replaces a table body's rows; each row is a list of cell texts. */
  function fillRows(tableId, rows, emptyText) {
    var body = byId(tableId).tBodies[0];
    var columns = byId(tableId).tHead.rows[0].cells.length;
    while (body.rows.length > rows.length) body.deleteRow(-1);
    if (rows.length === 0) {
      var row = body.insertRow();
      var cell = row.insertCell();
      cell.colSpan = columns;
      cell.className = 'empty';
      cell.textContent = emptyText;
      return;
    }
    rows.forEach(function (texts, i) {
      var tr = body.rows[i] || body.insertRow();
      if (tr.cells.length !== texts.length) { while (tr.cells.length) tr.deleteCell(0); texts.forEach(function () { tr.insertCell(); }); }
      tr.className = '';
      texts.forEach(function (text, j) { tr.cells[j].className = ''; tr.cells[j].colSpan = 1; setText(tr.cells[j], text); });
    });
  }

  function chartWidth(el) { return Math.max(280, el.clientWidth); }

  function makeChart(el, seriesOptions, axes) {
    var options = {
      width: chartWidth(el), height: 220,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      series: [{}].concat(seriesOptions),
      axes: axes
    };
    return new uPlot(options, [[]].concat(seriesOptions.map(function () { return []; })), el);
  }

  function buildCharts() {
    Object.keys(charts).forEach(function (key) { charts[key].destroy(); });
    charts.rates = makeChart(byId('rates-chart'), [
      { label: 'applies/s', stroke: '#2563eb', width: 2, spanGaps: false },
      { label: 'pushes/s', stroke: '#16a34a', width: 2, spanGaps: false },
      { label: 'changes/s', stroke: '#9333ea', width: 1, scale: 'changes', spanGaps: false }
    ], [{}, { label: 'messages/s' }, { side: 1, scale: 'changes', label: 'changes/s', grid: { show: false } }]);
    charts.latency = makeChart(byId('latency-chart'), [
      { label: 'apply p50', stroke: '#2563eb', width: 1, dash: [4, 4] },
      { label: 'apply p99', stroke: '#2563eb', width: 2 },
      { label: 'push p50', stroke: '#ea580c', width: 1, dash: [4, 4] },
      { label: 'push p99', stroke: '#ea580c', width: 2 }
    ], [{}, { label: 'ms' }]);
    drawCharts();
  }

  function drawCharts() {
    if (!series || !charts.rates) return;
    var x = series.at.map(function (at) { return at / 1000; });
    charts.rates.setData([x, series.applies, series.pushes, series.changes]);
    charts.latency.setData([x, series.applyP50, series.applyP99, series.pushP50, series.pushP99]);
    byId('rates-chart').setAttribute('data-points', String(x.length));
    byId('latency-chart').setAttribute('data-points', String(x.length));
    var last = x.length - 1;
    byId('rates-chart').setAttribute('data-last-applies', last >= 0 && series.applies[last] !== null ? String(series.applies[last]) : '');
  }

  function addPoint(point) {
    Object.keys(series).forEach(function (key) { series[key].push(point[key]); });
    var oldest = point.at - info.windowSeconds * 1000;
    while (series.at.length > 0 && series.at[0] < oldest) Object.keys(series).forEach(function (key) { series[key].shift(); });
    drawCharts();
  }

  function renderInfo() {
    setText('version', 'v' + info.version);
    setText('node', info.nodeId ? 'node ' + info.nodeId : 'single node');
    byId('archive-panel').hidden = !info.archive;
  }

  function latencyRow(id, p) {
    var cells = byId(id).cells;
    setText(cells[1], p ? ms(p.p50) : '-');
    setText(cells[2], p ? ms(p.p90) : '-');
    setText(cells[3], p ? ms(p.p99) : '-');
    setText(cells[4], p ? number(p.count) : '0');
  }

  /** "last 5 min", or "since 10:37:26" while the page has watched for less than that. */
  function renderWindow(sample, now) {
    var full = now - sample.recentSince >= (info.windowSeconds * 1000 - 1.5 * info.intervalMs);
    var text = full ? 'last ' + span(info.windowSeconds) : 'since ' + new Date(sample.recentSince).toLocaleTimeString();
    if (text === windowText) return;
    windowText = text;
    Array.prototype.forEach.call(document.querySelectorAll('.window'), function (el) { setText(el, text); });
  }

  function render(sample) {
    var now = sample.point.at;
    renderWindow(sample, now);
    setText('uptime', duration(sample.uptimeSeconds));
    setText('open-databases', number(sample.openDatabases));
    setText('clients', number(sample.clients));
    setText('applies-rate', number(sample.point.applies));
    setText('pushes-rate', number(sample.point.pushes));
    setText('changes-rate', number(sample.point.changes));
    setText('catching-up', number(sample.catchingUp));
    setText('lagged', number(sample.lagged.recent));
    setText('latency-window', String(sample.latency.seconds));
    latencyRow('latency-apply', sample.latency.apply);
    latencyRow('latency-push', sample.latency.push);

    var archive = sample.archive;
    byId('archive-panel').hidden = !archive;
    if (archive) {
      setText('archive-mode', archive.mode);
      setText('archive-lag', duration(archive.lagSeconds));
      setText('archive-outbox', bytes(archive.outboxBytes));
      setText('archive-pending', number(archive.pendingTransactions));
      setText('archive-upload', ago(archive.lastUploadAt, now));
      setText('archive-snapshot', ago(archive.lastSnapshotAt, now));
      setText('archive-restores', number(archive.restores) + ' / ' + number(archive.evictions));
      setText('archive-error', archive.lastError || 'none');
      byId('archive-error').className = archive.lastError ? 'bad' : '';
    }

    var cluster = sample.cluster;
    byId('cluster-panel').hidden = !cluster;
    if (cluster) {
      setText('cluster-node', cluster.node);
      setText('cluster-lag', duration(cluster.lagSeconds));
      setText('cluster-open', number(cluster.openDatabases));
      setText('cluster-broken', number(cluster.notFollowing));
      byId('cluster-broken').className = cluster.notFollowing > 0 ? 'bad' : '';
      fillRows('cluster-databases', cluster.databases.map(function (d) {
        return [d.id, d.lagSeconds === null ? '-' : duration(d.lagSeconds), d.following ? 'yes' : 'no'];
      }), 'no open database');
    }

    fillRows('errors', sample.errors.map(function (e) { return [e.code, number(e.recent), number(e.total)]; }), 'no errors');
    fillRows('refusals', sample.refusals.map(function (r) { return [r.limit, number(r.recent), number(r.total)]; }), 'no refusals');
    fillRows('databases', sample.databases.map(function (d) {
      return [d.id, number(d.clients), number(d.changesPerSecond), bytes(d.bytes), ago(d.lastWriteAt, now)];
    }), 'no open database');
    setText('database-count', sample.databaseCount > sample.databases.length ? '(' + sample.databases.length + ' of ' + sample.databaseCount + ')' : '');
    var updated = byId('updated');
    setText(updated, 'updated ' + new Date(now).toLocaleTimeString());
    updated.setAttribute('data-at', String(now));
  }

  function setState(state) {
    var el = byId('state');
    el.setAttribute('data-state', state);
    setText(el, state);
  }

  var source = new EventSource(eventsUrl);
  source.addEventListener('hello', function (event) {
    var hello = JSON.parse(event.data);
    info = hello.info;
    series = hello.series;
    renderInfo();
    buildCharts();
    if (hello.sample) render(hello.sample);
    setState('live');
  });
  source.addEventListener('message', function (event) {
    if (!series) return;
    var sample = JSON.parse(event.data);
    addPoint(sample.point);
    render(sample);
  });
  source.addEventListener('error', function () { setState(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting'); });

  var resizing = 0;
  window.addEventListener('resize', function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      Object.keys(charts).forEach(function (key) {
        var el = key === 'rates' ? byId('rates-chart') : byId('latency-chart');
        charts[key].setSize({ width: chartWidth(el), height: 220 });
      });
    }, 100);
  });
})();
`;
