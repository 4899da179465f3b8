/**
 * The status page served at GET /: one self-contained HTML document (no build step, no external assets)
 * that polls GET /status.json every two seconds and shows this node, its peers (state, backlog, last
 * error, rate) and its channels (pending, dead letters, rates), with a banner that says at a glance
 * whether messages are flowing. A peer waiting to retry has a "Retry now" button (POST
 * /peers/NAME/retry). It never shows message bodies or secrets. With `admin.token` set, the page (which
 * holds no data itself) asks for the token when /status.json answers 401, or takes it from `/?token=…`;
 * it keeps it in the tab's sessionStorage and sends it as a bearer header.
 */
import type { PeerEntry } from './peers-file.js';

export interface StatusSnapshot {
  readonly node: { readonly name: string; readonly id: string; readonly url: string; readonly startedAt: number; readonly restarts: number };
  readonly now: number;
  readonly peers: readonly PeerEntry[];
  readonly channels: readonly { readonly channel: string; readonly pending: number; readonly dead: number; readonly received: number; readonly acked: number }[];
  /** Whether the actions that change data (redrive, purge dead letters) are served: behind admin.token only. */
  readonly actions: boolean;
}

export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mqlog node</title>
<style>
  :root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --idle: #57606a; --line: #d0d7de; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
  body { margin: 0; background: #f6f8fa; color: #1f2328; }
  header { padding: 16px 24px; background: #fff; border-bottom: 1px solid var(--line); display: flex; gap: 24px; align-items: baseline; flex-wrap: wrap; }
  header h1 { margin: 0; font-size: 20px; }
  header .meta { color: var(--idle); font-size: 13px; }
  #banner { margin: 16px 24px; padding: 14px 18px; border-radius: 8px; color: #fff; font-size: 18px; font-weight: 600; background: var(--idle); }
  #banner.flowing { background: var(--ok); } #banner.stuck { background: var(--bad); } #banner.waiting { background: var(--warn); }
  section { margin: 16px 24px; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
  section h2 { margin: 0; padding: 10px 16px; font-size: 15px; border-bottom: 1px solid var(--line); }
  table { width: 100%; border-collapse: collapse; font-size: 14px; }
  th, td { text-align: left; padding: 8px 16px; border-bottom: 1px solid #eaeef2; }
  th { color: var(--idle); font-weight: 500; }
  td.num { font-variant-numeric: tabular-nums; text-align: right; } th.num { text-align: right; }
  .err { color: var(--bad); } .okc { color: var(--ok); } .empty { color: var(--idle); padding: 12px 16px; }
  button.retry { font: inherit; font-size: 13px; padding: 2px 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; cursor: pointer; }
  footer { margin: 16px 24px; color: var(--idle); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>mqlog · <span id="node-name">…</span></h1>
  <span class="meta">id <span id="node-id"></span></span>
  <span class="meta">listening on <span id="node-url"></span></span>
  <span class="meta">up <span id="uptime"></span></span>
  <span class="meta">restarts <span id="restarts"></span></span>
</header>
<div id="banner">Loading…</div>
<form id="login" hidden><label>Admin token <input id="token" type="password" autocomplete="current-password"></label> <button type="submit">Show</button></form>
<section>
  <h2>Peers</h2>
  <table>
    <thead><tr><th>Peer</th><th>Address</th><th class="num">Backlog</th><th class="num">Sent/s</th><th class="num">Sent</th><th>Last sent</th><th>Last error</th><th>State</th><th></th></tr></thead>
    <tbody id="peers"></tbody>
  </table>
</section>
<section>
  <h2>Channels</h2>
  <table>
    <thead><tr><th>Channel</th><th class="num">Pending</th><th class="num">Dead letters</th><th class="num">Received/s</th><th class="num">Acked/s</th><th class="num">Received</th><th class="num">Acked</th><th></th></tr></thead>
    <tbody id="channels"></tbody>
  </table>
</section>
<footer>Refreshes every 2 s · <a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a> · updated <span id="updated">never</span></footer>
<script>
(function () {
  var previous = null;
  // The admin token (admin.token): from ?token=… or the login form, kept for this tab in sessionStorage
  // and sent as a bearer header (the address bar forgets it).
  var given = new URLSearchParams(location.search).get('token');
  if (given) { sessionStorage.setItem('mqlog-token', given); history.replaceState(null, '', location.pathname); }
  function options(method) {
    var token = sessionStorage.getItem('mqlog-token');
    return { method: method, cache: 'no-store', headers: token ? { authorization: 'Bearer ' + token } : {} };
  }
  var login = document.getElementById('login');
  login.addEventListener('submit', function (e) {
    e.preventDefault(); sessionStorage.setItem('mqlog-token', document.getElementById('token').value); login.hidden = true; tick();
  });
  function retryNow(peer, button) {
    button.disabled = true; button.textContent = 'Retrying…';
    fetch('/peers/' + encodeURIComponent(peer) + '/retry', options('POST'))
      .then(function (r) { button.textContent = r.ok ? 'Asked' : 'Failed (' + r.status + ')'; })
      .catch(function () { button.textContent = 'Failed'; })
      .then(tick);
  }
  // Redrive or purge a channel's dead letters (offered behind the admin token only; a purge asks first).
  function deadAction(channel, what, button) {
    if (what === 'purge' && !confirm('Purge every dead letter of ' + channel + '? They are gone for good.')) return;
    button.disabled = true;
    fetch('/channels/' + encodeURIComponent(channel) + (what === 'purge' ? '/dead/purge' : '/redrive'), options('POST'))
      .then(function (r) { return r.json().then(function (j) { button.textContent = r.ok ? (what === 'purge' ? j.purged + ' purged' : j.redriven + ' redriven') : 'Failed (' + r.status + ')'; }); })
      .catch(function () { button.textContent = 'Failed'; })
      .then(tick);
  }
  function until(ms, now) { if (ms === null) return ''; var s = Math.max(0, Math.round((ms - now) / 1000)); return s < 60 ? 'in ' + s + ' s' : 'in ' + Math.round(s / 60) + ' min'; }
  function el(tag, text, cls) { var e = document.createElement(tag); if (text !== undefined) e.textContent = String(text); if (cls) e.className = cls; return e; }
  function ago(ms, now) { if (ms === null) return 'never'; var s = Math.max(0, Math.round((now - ms) / 1000)); return s < 60 ? s + ' s ago' : s < 3600 ? Math.round(s / 60) + ' min ago' : Math.round(s / 3600) + ' h ago'; }
  function rate(now, key, value) {
    if (!previous || !(key in previous.values)) return 0;
    var dt = (now - previous.now) / 1000; return dt > 0 ? Math.max(0, (value - previous.values[key]) / dt) : 0;
  }
  function fmt(n) { return n >= 100 ? String(Math.round(n)) : n >= 10 ? n.toFixed(1) : n.toFixed(2).replace(/\\.?0+$/, '') || '0'; }
  function render(s) {
    var values = {};
    document.getElementById('node-name').textContent = s.node.name;
    document.getElementById('node-id').textContent = s.node.id;
    document.getElementById('node-url').textContent = s.node.url;
    document.getElementById('restarts').textContent = String(s.node.restarts);
    document.getElementById('uptime').textContent = ago(s.node.startedAt, s.now).replace(' ago', '');
    var peers = document.getElementById('peers'); peers.textContent = '';
    var out = 0, backlog = 0, failing = [];
    s.peers.forEach(function (p) {
      var r = rate(s.now, 'p:' + p.peer, p.forwarded); values['p:' + p.peer] = p.forwarded; out += r; backlog += p.backlog;
      if (p.lastError && p.backlog > 0) failing.push(p.peer);
      var tr = el('tr'); tr.setAttribute('data-peer', p.peer);
      tr.appendChild(el('td', p.peer));
      tr.appendChild(el('td', p.url));
      var b = el('td', p.backlog, 'num'); b.setAttribute('data-field', 'backlog'); tr.appendChild(b);
      tr.appendChild(el('td', fmt(r), 'num'));
      var f = el('td', p.forwarded, 'num'); f.setAttribute('data-field', 'forwarded'); tr.appendChild(f);
      tr.appendChild(el('td', ago(p.lastSentAt, s.now)));
      var e = el('td', p.lastError ? p.lastError + ' (' + ago(p.lastErrorAt, s.now) + ')' : 'none', p.lastError ? 'err' : 'okc'); e.setAttribute('data-field', 'lastError'); tr.appendChild(e);
      var st = el('td', p.state === 'retrying' ? 'retrying ' + until(p.nextAttemptAt, s.now) : p.state, p.state === 'retrying' ? 'err' : ''); st.setAttribute('data-field', 'state'); tr.appendChild(st);
      var action = el('td');
      if (p.state === 'retrying') {
        var button = el('button', 'Retry now', 'retry'); button.type = 'button'; button.setAttribute('data-action', 'retry');
        button.addEventListener('click', retryNow.bind(null, p.peer, button));
        action.appendChild(button);
      }
      tr.appendChild(action);
      peers.appendChild(tr);
    });
    if (s.peers.length === 0) { var none = el('tr'); var td = el('td', 'No peers configured and no destinations used yet.', 'empty'); td.colSpan = 9; none.appendChild(td); peers.appendChild(none); }
    var channels = document.getElementById('channels'); channels.textContent = '';
    var inbound = 0, pending = 0;
    s.channels.forEach(function (c) {
      var rr = rate(s.now, 'r:' + c.channel, c.received), ra = rate(s.now, 'a:' + c.channel, c.acked);
      values['r:' + c.channel] = c.received; values['a:' + c.channel] = c.acked; inbound += rr; pending += c.pending;
      var tr = el('tr'); tr.setAttribute('data-channel', c.channel);
      tr.appendChild(el('td', c.channel));
      var p = el('td', c.pending, 'num'); p.setAttribute('data-field', 'pending'); tr.appendChild(p);
      var d = el('td', c.dead, c.dead > 0 ? 'num err' : 'num'); d.setAttribute('data-field', 'dead'); tr.appendChild(d);
      tr.appendChild(el('td', fmt(rr), 'num'));
      tr.appendChild(el('td', fmt(ra), 'num'));
      var rc = el('td', c.received, 'num'); rc.setAttribute('data-field', 'received'); tr.appendChild(rc);
      var ac = el('td', c.acked, 'num'); ac.setAttribute('data-field', 'acked'); tr.appendChild(ac);
      var act = el('td');
      if (s.actions && c.dead > 0) {
        [['redrive', 'Redrive'], ['purge', 'Purge dead letters']].forEach(function (a) {
          var b = el('button', a[1]); b.setAttribute('data-action', a[0]);
          b.addEventListener('click', function () { deadAction(c.channel, a[0], b); });
          act.appendChild(b);
        });
      }
      tr.appendChild(act);
      channels.appendChild(tr);
    });
    if (s.channels.length === 0) { var none2 = el('tr'); var td2 = el('td', 'No inbox yet.', 'empty'); td2.colSpan = 8; none2.appendChild(td2); channels.appendChild(none2); }
    var banner = document.getElementById('banner');
    if (failing.length > 0) { banner.className = 'stuck'; banner.textContent = 'Not flowing to ' + failing.join(', ') + ': ' + backlog + ' message(s) waiting'; }
    else if (out + inbound > 0) { banner.className = 'flowing'; banner.textContent = 'Flowing: ' + fmt(out) + ' msg/s out, ' + fmt(inbound) + ' msg/s in'; }
    else if (backlog > 0) { banner.className = 'waiting'; banner.textContent = backlog + ' message(s) waiting to be sent'; }
    else { banner.className = 'idle'; banner.textContent = 'Idle: nothing waiting' + (pending > 0 ? ', ' + pending + ' message(s) pending in inboxes' : ''); }
    banner.setAttribute('data-state', banner.className);
    document.getElementById('updated').textContent = new Date(s.now).toLocaleTimeString();
    previous = { now: s.now, values: values };
  }
  function tick() {
    fetch('/status.json', options('GET')).then(function (r) {
      if (r.status === 401) {
        // This node wants its admin token: ask for it (once it is given, the next tick uses it).
        login.hidden = false; var banner = document.getElementById('banner'); banner.className = 'waiting'; banner.textContent = 'This node asks for its admin token'; banner.setAttribute('data-state', 'login');
        return undefined;
      }
      return r.json().then(render);
    }).catch(function () {
      var banner = document.getElementById('banner'); banner.className = 'stuck'; banner.textContent = 'This node does not answer'; banner.setAttribute('data-state', 'unreachable');
    });
  }
  tick(); setInterval(tick, 2000);
})();
</script>
</body>
</html>
`;
