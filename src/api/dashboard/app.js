// Dockhand dashboard: plain JavaScript, no build step, no dependency.
//
// How it stays live and cheap:
// - The view on screen is refreshed every 2 s from the JSON API, one request or
//   two (never more than one page of jobs), and not at all while the tab is hidden.
// - Where the server has them, Server-Sent Events make it quicker: `/events` (every
//   job event) asks for a refresh at once, and `/jobs/{id}/logs` streams a job's
//   log. Without them (404), the page keeps to polling and says so.
// - Everything shown comes from the server and is put in the page as text
//   (textContent), never as HTML: a log line or a result cannot become markup.
//
// Tokens: when the API answers 401, the page asks for a token once, keeps it in
// sessionStorage (this tab only), sends it as `Authorization: Bearer`, and as
// `?token=` where a header cannot be sent (EventSource).
'use strict';

(function () {
  const POLL_MS = 2000;
  const LOG_KEEP = 5000; // log lines kept in the page; older ones are dropped from view
  const STATUSES = ['queued', 'scheduled', 'waiting', 'building', 'running', 'completed', 'aborted'];
  const REASONS = ['exit_code', 'aborted_by_job', 'timeout', 'cancelled', 'build_error',
    'invalid_spec', 'worker_lost', 'policy_denied', 'image_not_found', 'docker_error', 'dependency_failed', 'transfer_error'];
  const FINISHED = new Set(['completed', 'aborted']);
  const TOKEN_KEY = 'dockhand.token';

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  // Empties `el`, then adds `children` (skipping null and false, unlike el.append).
  function clear(el, ...children) { el.replaceChildren(); return append(el, children); }
  function badge(word, extra) { return h('span', { class: 'badge ' + (extra || word), 'data-badge': word }, word); }
  function link(href, text, attrs) { return h('a', Object.assign({ href }, attrs || {}), text); }
  const enc = encodeURIComponent;

  function toast(message, bad) {
    const t = h('div', { class: 'toast' + (bad ? ' bad' : ''), role: 'status' }, message);
    document.getElementById('toasts').append(t);
    setTimeout(() => t.remove(), bad ? 6000 : 3000);
  }

  // Times: relative for reading, the exact time in the title.
  function parseTime(v) { if (!v) return null; const t = Date.parse(v); return Number.isNaN(t) ? null : t; }
  function fmtSeconds(s) {
    if (s == null || Number.isNaN(s)) return '—';
    s = Math.max(0, s);
    if (s < 1) return (s * 1000).toFixed(0) + ' ms';
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.floor(s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }
  function ago(v) {
    const t = parseTime(v);
    if (t == null) return h('span', { class: 'muted' }, '—');
    const s = (Date.now() - t) / 1000;
    const text = s < 5 ? 'just now' : fmtSeconds(s).replace(/ \d+ (s|min|h)$/, '') + ' ago';
    return h('span', { title: new Date(t).toLocaleString() }, text);
  }
  function duration(job) {
    const a = parseTime(job.started_at);
    if (a == null) return '—';
    const b = parseTime(job.finished_at) ?? Date.now();
    return fmtSeconds((b - a) / 1000);
  }

  // ---------------------------------------------------------------- API and token

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let asking = null; // one prompt at a time, shared by every request that got a 401
  let declined = false;

  function askToken(why) {
    if (asking) return asking;
    const dialog = document.getElementById('token-dialog');
    const input = document.getElementById('token-input');
    document.getElementById('token-why').firstChild.textContent = why + ' Paste an API token (from ';
    input.value = '';
    asking = new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        const given = input.value.trim();
        if (dialog.returnValue === 'ok' && given) {
          token = given;
          sessionStorage.setItem(TOKEN_KEY, token);
          declined = false;
        } else {
          declined = true;
        }
        asking = null;
        resolve();
      }, { once: true });
      dialog.showModal();
      input.focus();
    });
    return asking;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, method) {
    method = method || 'GET';
    for (let attempt = 0; ; attempt++) {
      const headers = { Accept: 'application/json' };
      if (token) headers.Authorization = 'Bearer ' + token;
      let res;
      try {
        res = await fetch(path, { method, headers, cache: 'no-store' });
      } catch (e) {
        setLive('offline');
        throw new ApiError(0, 'the server does not answer');
      }
      if (res.status === 401 && !declined && attempt < 2) {
        await askToken(token ? 'That token was not accepted.' : 'This server needs a token.');
        if (!declined) continue;
      }
      let data = null;
      try { data = await res.json(); } catch (e) { /* an empty body (204) */ }
      if (!res.ok) {
        if (res.status === 503) setLive('offline');
        throw new ApiError(res.status, (data && data.error) || res.statusText);
      }
      setLive('live');
      return data;
    }
  }

  // An action the user asked for: its answer, or its error, as a toast.
  async function act(path, method, done) {
    try {
      const r = await api(path, method);
      if (done) toast(done(r));
      kick();
      return r;
    } catch (e) {
      toast(e.status === 403 ? 'This token may only read; changing anything needs an admin token.' : e.message, true);
      return null;
    }
  }

  function withToken(url) {
    return token ? url + (url.includes('?') ? '&' : '?') + 'token=' + enc(token) : url;
  }

  // A job's file: fetched with the token header and saved from memory, so the
  // token never sits in a link or the browser's history.
  async function download(id, name) {
    try {
      const headers = token ? { Authorization: 'Bearer ' + token } : {};
      const res = await fetch('/jobs/' + enc(id) + '/files/' + enc(name), { headers });
      if (!res.ok) throw new Error('the file could not be fetched (' + res.status + ')');
      const url = URL.createObjectURL(await res.blob());
      const a = h('a', { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      toast(e.message, true);
    }
  }

  // ---------------------------------------------------------------- liveness

  const liveEl = () => document.getElementById('live');
  function setLive(state) {
    const el = liveEl();
    if (document.hidden) state = 'hidden';
    el.dataset.state = state;
    el.textContent = { live: 'live', offline: 'offline', hidden: 'paused while hidden', starting: 'connecting' }[state] || state;
  }

  let current = null; // the view on screen: { refresh(), leave() }
  let timer = null;
  let running = false;
  let again = false;

  // Refreshes the view now (or right after the refresh under way), then every POLL_MS.
  async function kick() {
    if (running) { again = true; return; }
    clearTimeout(timer);
    if (document.hidden || !current) return;
    running = true;
    const view = current;
    try {
      await view.refresh();
    } catch (e) {
      if (view === current && view.failed) view.failed(e);
    } finally {
      running = false;
    }
    if (again) { again = false; kick(); return; }
    timer = setTimeout(kick, POLL_MS);
  }

  // Asks for a refresh soon; many events in a burst make one refresh.
  let soon = null;
  function kickSoon() {
    if (soon) return;
    soon = setTimeout(() => { soon = null; kick(); }, 300);
  }

  document.addEventListener('visibilitychange', () => {
    if (document.hidden) { clearTimeout(timer); setLive('hidden'); } else { setLive('live'); kick(); }
  });

  // `/events`: every job event. Used only to refresh sooner; polling goes on without it.
  let events = null;
  const eventListeners = new Set();
  function openEvents() {
    if (events || !('EventSource' in window)) return;
    events = new EventSource(withToken('/events'));
    events.onmessage = (e) => {
      let ev = null;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      for (const f of eventListeners) f(ev);
      kickSoon();
    };
    events.onerror = () => {
      // CLOSED: refused (no such route yet, or a token problem): keep to polling.
      if (events && events.readyState === EventSource.CLOSED) {
        document.body.dataset.events = 'unavailable';
        events = null;
      }
    };
    events.onopen = () => { document.body.dataset.events = 'open'; };
  }

  // ---------------------------------------------------------------- rows

  // Puts `items` in `tbody`, one row each, keyed: a row whose data did not change is
  // left alone (so a click on it is never lost to a refresh), and one that did is
  // made again.
  function renderRows(tbody, items, key, build) {
    const old = new Map();
    for (const tr of tbody.children) if (tr.dataset.key != null) old.set(tr.dataset.key, tr);
    let at = tbody.firstChild;
    for (const item of items) {
      const k = String(key(item));
      const sig = JSON.stringify(item);
      let tr = old.get(k);
      if (tr && tr._sig !== sig) {
        const fresh = build(item);
        tr.replaceWith(fresh);
        tr = fresh;
      } else if (!tr) {
        tr = build(item);
      }
      tr.dataset.key = k;
      tr._sig = sig;
      old.delete(k);
      if (tr !== at) tbody.insertBefore(tr, at); else at = at.nextSibling;
    }
    for (const tr of old.values()) tr.remove();
    for (const tr of [...tbody.children]) if (tr.dataset.key == null) tr.remove();
  }

  function table(headers, cls) {
    const tbody = h('tbody');
    const t = h('table', { class: cls || '' },
      h('thead', {}, h('tr', {}, headers.map((x) => {
        const [label, c] = Array.isArray(x) ? x : [x, ''];
        return h('th', { class: c }, label);
      }))),
      tbody);
    return { el: h('div', { class: 'table-scroll' }, t), tbody };
  }

  function num(v, opts) {
    const zero = !v;
    return h('td', { class: 'num' + (zero ? ' zero' : '') + (opts && opts.bad && !zero ? ' err' : '') }, v == null ? '—' : v.toLocaleString());
  }

  function emptyRow(tbody, cols, text) {
    if (tbody.children.length) return;
    tbody.append(h('tr', {}, h('td', { class: 'empty', colspan: cols }, text)));
  }

  // ---------------------------------------------------------------- overview

  function overview(main) {
    const cards = h('div', { class: 'cards' });
    const q = table(['Queue', 'State', ['Waiting', 'num'], ['Running', 'num'], ['Scheduled', 'num'],
      ['Dead', 'num'], ['Oldest waiting', 'num'], ['Done / min', 'num'], ['Workers', 'num'], ['', 'actions']]);
    q.tbody.id = 'queues';
    const w = table(['Worker', 'State', 'Queues', ['Slots', 'num'], 'Running jobs', 'Docker', 'Heartbeat', 'Started', 'Version']);
    w.tbody.id = 'workers';
    append(main, [
      h('div', { class: 'page-head' }, h('h1', {}, 'Overview')),
      cards,
      h('section', { class: 'panel' },
        h('div', { class: 'panel-head' }, h('h2', {}, 'Queues'), h('span', { class: 'hint' }, 'A paused queue keeps its jobs; workers claim nothing from it until it is resumed.')),
        q.el),
      h('section', { class: 'panel' },
        h('div', { class: 'panel-head' }, h('h2', {}, 'Workers'), h('span', { class: 'hint' }, 'Each worker beats every third of its lease; a gone one stays listed until another takes over its jobs.')),
        w.el),
    ]);

    function card(label, value, bad) {
      return h('div', { class: 'card' + (bad && value ? ' bad' : '') },
        h('div', { class: 'label' }, label), h('div', { class: 'value' }, value.toLocaleString()));
    }

    function queueRow(s) {
      const action = s.paused
        ? h('button', { class: 'btn small primary', 'data-action': 'resume', onclick: () => act('/queues/' + enc(s.queue) + '/resume', 'POST', () => 'Queue ' + s.queue + ' resumed') }, 'Resume')
        : h('button', { class: 'btn small', 'data-action': 'pause', onclick: () => act('/queues/' + enc(s.queue) + '/pause', 'POST', () => 'Queue ' + s.queue + ' paused') }, 'Pause');
      return h('tr', { 'data-queue': s.queue, 'data-paused': s.paused ? 'true' : 'false' },
        h('td', {}, link('#/jobs?queue=' + enc(s.queue), s.queue, { class: 'mono' })),
        h('td', {}, s.paused ? badge('paused') : badge('active')),
        num(s.waiting + (s.inbox || 0)), num(s.running), num(s.scheduled),
        s.dead ? h('td', { class: 'num' }, link('#/dead?queue=' + enc(s.queue), s.dead.toLocaleString(), { class: 'err' })) : num(0),
        h('td', { class: 'num' + (s.oldest_waiting_seconds == null ? ' zero' : '') }, fmtSeconds(s.oldest_waiting_seconds)),
        num(s.finished_last_minute), num(s.workers),
        h('td', { class: 'actions' }, action));
    }

    function workerRow(x) {
      const running = Array.isArray(x.running) ? x.running : [];
      return h('tr', { 'data-worker': x.consumer },
        h('td', { class: 'mono' }, x.worker || x.consumer, x.pid ? h('span', { class: 'muted' }, ' · pid ' + x.pid) : null),
        h('td', {}, x.alive ? badge('alive') : badge('gone')),
        h('td', {}, (x.queues || []).map((n) => h('span', { class: 'tag' }, n))),
        num(x.concurrency),
        h('td', { class: 'wrap' }, running.length ? running.map((id, i) => [i ? ', ' : '', link('#/jobs/' + enc(id), id, { class: 'mono' })]) : h('span', { class: 'muted' }, 'idle')),
        h('td', {}, x.docker ? badge(x.docker === 'ok' ? 'ok' : x.docker, x.docker === 'ok' ? 'alive' : 'unreachable') : '—'),
        h('td', {}, ago(x.beat_at)),
        h('td', {}, ago(x.started_at)),
        h('td', { class: 'muted' }, x.version || '—'));
    }

    return {
      nav: 'overview',
      async refresh() {
        const [qs, ws] = await Promise.all([api('/queues'), api('/workers')]);
        const queues = qs.queues || [];
        const workers = ws.workers || [];
        const sum = (f) => queues.reduce((a, s) => a + (f(s) || 0), 0);
        clear(cards, 
          card('Waiting', sum((s) => s.waiting + (s.inbox || 0))),
          card('Running', sum((s) => s.running)),
          card('Scheduled', sum((s) => s.scheduled)),
          card('Dead', sum((s) => s.dead), true),
          card('Done / min', sum((s) => s.finished_last_minute)),
          card('Workers alive', workers.filter((x) => x.alive).length));
        renderRows(q.tbody, queues, (s) => s.queue, queueRow);
        emptyRow(q.tbody, 10, 'No queue yet: a queue appears when a job is submitted to it or a worker serves it.');
        // `ago` cells move with the clock, so the rows carry the minute too.
        renderRows(w.tbody, workers.map((x) => Object.assign({ _t: Math.floor(Date.now() / 5000) }, x)), (x) => x.consumer, workerRow);
        emptyRow(w.tbody, 9, 'No worker has announced itself. Start one with: dockhand worker');
      },
    };
  }

  // ---------------------------------------------------------------- jobs

  function jobsView(main, params) {
    const filter = { queue: params.get('queue') || '', status: params.get('status') || '', reason: params.get('reason') || '' };
    const cursors = [params.get('cursor') || '']; // the cursors of the pages seen, to go back
    let next = null;

    const setFilter = (k, v) => {
      filter[k] = v;
      const p = new URLSearchParams();
      for (const [a, b] of Object.entries(filter)) if (b) p.set(a, b);
      location.hash = '#/jobs' + (p.toString() ? '?' + p : '');
    };
    const select = (k, label, options) => h('label', {}, label,
      h('select', { 'data-filter': k, onchange: (e) => setFilter(k, e.target.value) },
        h('option', { value: '' }, 'any'),
        options.map((o) => h('option', { value: o, selected: o === filter[k] }, o))));

    const queueSelect = select('queue', 'Queue', filter.queue ? [filter.queue] : []);
    const t = table(['Job', 'Queue', 'Status', 'Reason', ['Attempt', 'num'], 'Image', 'Created', ['Took', 'num'], 'Worker']);
    t.tbody.id = 'jobs';
    const pageInfo = h('span');
    const newer = h('button', { class: 'btn small', onclick: () => { cursors.pop(); kick(); } }, '← Newer');
    const older = h('button', { class: 'btn small', onclick: () => { if (next) { cursors.push(next); kick(); } } }, 'Older →');

    append(main, [
      h('div', { class: 'page-head' }, h('h1', {}, 'Jobs'), h('span', { class: 'spacer' }),
        h('div', { class: 'filters' }, queueSelect, select('status', 'Status', STATUSES), select('reason', 'Reason', REASONS),
          (filter.queue || filter.status || filter.reason) ? h('a', { href: '#/jobs' }, 'Clear') : null)),
      h('section', { class: 'panel' }, t.el, h('div', { class: 'pager' }, pageInfo, h('span', { class: 'spacer' }), newer, older)),
    ]);

    function row(j) {
      return h('tr', { 'data-job': j.id, 'data-status': j.status },
        h('td', {}, link('#/jobs/' + enc(j.id), j.id, { class: 'mono' })),
        h('td', {}, h('span', { class: 'tag' }, j.queue)),
        h('td', {}, badge(j.status)),
        h('td', {}, j.reason ? h('span', { title: j.error || '' }, j.reason) : h('span', { class: 'muted' }, '—')),
        num(j.attempt),
        h('td', { class: 'mono muted' }, j.image || '—'),
        h('td', {}, ago(j.created_at)),
        h('td', { class: 'num' }, duration(j)),
        h('td', { class: 'mono muted' }, j.worker || '—'));
    }

    let queuesLoaded = false;
    return {
      nav: 'jobs',
      async refresh() {
        const p = new URLSearchParams({ limit: '50' });
        for (const [a, b] of Object.entries(filter)) if (b) p.set(a, b);
        const cursor = cursors[cursors.length - 1];
        if (cursor) p.set('cursor', cursor);
        const page = await api('/jobs?' + p);
        next = page.next || null;
        const jobs = page.jobs || [];
        const tick = Math.floor(Date.now() / 5000);
        renderRows(t.tbody, jobs.map((j) => Object.assign({ _t: FINISHED.has(j.status) ? 0 : tick }, j)), (j) => j.id, row);
        emptyRow(t.tbody, 9, cursors.length > 1 ? 'Nothing older.' : 'No job matches. A job is listed once a worker has read it; one still waiting unread is found by its id (above).');
        newer.disabled = cursors.length <= 1;
        older.disabled = !next;
        pageInfo.textContent = 'Page ' + cursors.length + ' · ' + jobs.length + ' shown · newest first';
        if (!queuesLoaded) {
          queuesLoaded = true;
          const qs = await api('/queues');
          const sel = queueSelect.querySelector('select');
          for (const s of qs.queues || []) {
            if (s.queue !== filter.queue) sel.append(h('option', { value: s.queue }, s.queue));
          }
        }
      },
      failed(e) {
        clear(t.tbody, h('tr', {}, h('td', { class: 'empty', colspan: 9 }, e.message)));
      },
    };
  }

  // ---------------------------------------------------------------- one job

  function jobView(main, id) {
    let job = null;
    let deliveries = [];
    let logMode = 'connecting';
    let logSource = null;
    let lastSeq = -1;
    let shown = 0;
    let dropped = 0;
    let ended = false;
    const counts = { stdout: 0, stderr: 0, build: 0, system: 0 };

    const title = h('div', { class: 'page-head' });
    const banner = h('div');
    const facts = h('dl', { class: 'facts' });
    const result = h('div', { class: 'panel-body' });
    const logEl = h('div', { class: 'log', id: 'log', 'data-log-mode': logMode, role: 'log' });
    const logNote = h('span', { class: 'hint' });
    const countEls = {};
    const follow = h('input', { type: 'checkbox', checked: true });
    const toggles = ['stdout', 'stderr', 'build', 'system'].map((s) => {
      countEls[s] = h('span', {}, '0');
      return h('label', {}, h('input', { type: 'checkbox', checked: true, onchange: (e) => logEl.classList.toggle('hide-' + s, !e.target.checked) }),
        h('span', { class: 'swatch ' + s }), s, ' ', countEls[s]);
    });

    append(main, [
      h('div', { class: 'crumbs' }, link('#/jobs', 'Jobs'), ' / ', h('span', { class: 'mono' }, id)),
      title, banner,
      h('div', { class: 'cols' },
        h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'State')), h('div', { class: 'panel-body' }, facts)),
        h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Result')), result)),
      h('section', { class: 'panel log-panel' },
        h('div', { class: 'panel-head' }, h('h2', {}, 'Log'), logNote, h('span', { class: 'spacer' }),
          h('div', { class: 'log-tools' }, toggles, h('label', {}, follow, 'follow'))),
        logEl),
    ]);

    function setMode(m, note) {
      logMode = m;
      logEl.dataset.logMode = m;
      logNote.textContent = note || '';
    }

    // Lines are added in batches (one frame each), and at most LOG_KEEP stay in the
    // page, so a job printing fast does not stall the tab.
    let pending = [];
    let frame = 0;
    function addLine(d) {
      if (typeof d.seq === 'number') {
        if (d.seq <= lastSeq) return; // already shown (a reconnect resumed before it)
        lastSeq = d.seq;
      }
      pending.push(d);
      if (!frame) frame = requestAnimationFrame(flush);
    }
    function flush() {
      frame = 0;
      const frag = document.createDocumentFragment();
      for (const d of pending) {
        const stream = ['stdout', 'stderr', 'build', 'system'].includes(d.stream) ? d.stream : 'stdout';
        counts[stream]++;
        const t = parseTime(d.ts);
        frag.append(h('div', { class: 'line s-' + stream, 'data-seq': d.seq, 'data-stream': stream },
          h('span', { class: 'seq' }, d.seq == null ? '' : d.seq),
          h('span', { class: 'ts', title: d.ts || '' }, t == null ? '' : new Date(t).toLocaleTimeString([], { hour12: false })),
          h('span', { class: 'st' }, stream === 'stdout' ? '' : stream),
          h('span', { class: 'text' }, d.line)));
      }
      shown += pending.length;
      pending = [];
      logEl.append(frag);
      for (const [s, el] of Object.entries(countEls)) el.textContent = counts[s].toLocaleString();
      while (shown > LOG_KEEP) {
        const first = logEl.querySelector('.line');
        if (!first) break;
        first.remove();
        shown--;
        dropped++;
      }
      if (dropped) {
        let n = logEl.querySelector('.note.dropped');
        if (!n) { n = h('div', { class: 'note dropped' }); logEl.prepend(n); }
        n.textContent = dropped.toLocaleString() + ' earlier lines not shown here (`dockhand logs ' + id + '` has them all)';
      }
      if (follow.checked) logEl.scrollTop = logEl.scrollHeight;
    }

    function openLog() {
      if (!('EventSource' in window)) { setMode('poll', 'This browser has no EventSource: showing the tail kept with the job.'); return; }
      let opened = false;
      const es = new EventSource(withToken('/jobs/' + enc(id) + '/logs'));
      logSource = es;
      es.onopen = () => { opened = true; setMode('sse', 'streaming'); };
      es.addEventListener('line', (e) => {
        try { addLine(JSON.parse(e.data)); } catch (err) { /* not a line */ }
      });
      es.addEventListener('end', (e) => {
        let status = e.data;
        try { const v = JSON.parse(e.data); status = (v && v.status) || v; } catch (err) { /* plain text */ }
        ended = true;
        es.close();
        logSource = null;
        setMode('sse', 'ended' + (status ? ' · ' + status : ''));
        kick();
      });
      es.onerror = () => {
        if (es.readyState !== EventSource.CLOSED) return; // the browser reconnects, resuming at Last-Event-ID
        logSource = null;
        if (!opened) {
          // Refused: this server has no log stream (or not for this job yet).
          setMode('poll', 'No live log stream on this server; the state is polled every 2 s.');
        } else if (!ended) {
          // It was streaming and was cut: open again; lines already shown are skipped by seq.
          setTimeout(() => { if (current && current.id === id && !logSource) openLog(); }, POLL_MS);
        }
      };
    }

    function showTail() {
      // Without the stream: what the job's state carries (`log_tail`), if anything.
      const tail = job && Array.isArray(job.log_tail) ? job.log_tail : null;
      if (!tail) {
        if (!logEl.querySelector('.note.no-tail')) logEl.append(h('div', { class: 'note no-tail' }, 'No log lines are available without the stream; `dockhand logs ' + id + '` prints them.'));
        return;
      }
      clear(logEl);
      counts.stdout = counts.stderr = counts.build = counts.system = 0;
      shown = 0; lastSeq = -1;
      tail.forEach((line, i) => addLine(typeof line === 'string' ? { seq: i, line, stream: 'stdout' } : line));
    }

    function fact(label, value) { return [h('dt', {}, label), h('dd', {}, value == null || value === '' ? h('span', { class: 'muted' }, '—') : value)]; }

    function render(queues) {
      const j = job;
      const status = j.status || 'unknown';
      const canRetry = FINISHED.has(status);
      const canCancel = !FINISHED.has(status) && !j.cancel_requested;
      clear(title, 
        h('h1', { class: 'mono' }, id), h('span', { id: 'job-status' }, badge(status)),
        j.cancel_requested && !FINISHED.has(status) ? h('span', { class: 'muted' }, 'cancel requested') : null,
        h('span', { class: 'spacer' }),
        h('button', { class: 'btn', id: 'retry', disabled: !canRetry, title: 'Run it again, same id, next attempt', onclick: () => act('/jobs/' + enc(id) + '/retry', 'POST', (r) => 'Queued again as attempt ' + r.attempt).then((r) => { if (r) restartLog(); }) }, 'Retry'),
        h('button', { class: 'btn danger', id: 'cancel', disabled: !canCancel, onclick: () => act('/jobs/' + enc(id), 'DELETE', () => 'Cancel requested') }, 'Cancel'));

      clear(banner);
      const q = queues && queues.find((s) => s.queue === j.queue);
      if (status === 'queued' && q && q.paused) {
        banner.append(h('div', { class: 'banner warn', id: 'paused-banner' },
          h('span', {}, 'Queue ', h('b', { class: 'mono' }, j.queue), ' is paused: this job waits until it is resumed.'),
          h('span', { class: 'spacer' }),
          h('button', { class: 'btn small primary', 'data-action': 'resume', onclick: () => act('/queues/' + enc(j.queue) + '/resume', 'POST', () => 'Queue ' + j.queue + ' resumed') }, 'Resume ' + j.queue)));
      }
      if (j.error) banner.append(h('div', { class: 'banner bad' }, h('span', { class: 'error-text' }, j.error)));

      clear(facts, ...[
        fact('Queue', j.queue ? link('#/jobs?queue=' + enc(j.queue), j.queue, { class: 'mono' }) : null),
        fact('Status', status + (j.reason ? ' · ' + j.reason : '')),
        fact('Attempt', j.attempt),
        fact('Image', j.image ? h('span', { class: 'mono' }, j.image) : null),
        j.commit ? fact('Commit', h('span', { class: 'mono' }, j.commit)) : null,
        fact('Worker', j.worker ? h('span', { class: 'mono' }, j.worker) : (j.claimed === false ? 'not read by a worker yet' : null)),
        fact('Created', j.created_at ? [ago(j.created_at), h('span', { class: 'muted' }, ' · ' + j.created_at)] : null),
        fact('Started', j.started_at ? ago(j.started_at) : null),
        fact('Finished', j.finished_at ? ago(j.finished_at) : null),
        fact('Took', j.started_at ? duration(j) : null),
        fact('Exit code', j.exit_code),
        // The last progress report (PROGRESS_URL or progress.json), as a bar and its message.
        j.progress && typeof j.progress.progress === 'number' ? fact('Progress', [
          h('progress', { id: 'progress', max: '1', value: String(j.progress.progress) }),
          h('span', { class: 'muted' }, ' ' + Math.round(j.progress.progress * 100) + '%' + (j.progress.message ? ' · ' + j.progress.message : '')),
        ]) : null,
        // How often its queue entry went to a worker (more than once: a worker was lost).
        j.deliveries != null ? fact('Deliveries', j.deliveries) : null,
        j.metadata ? fact('Metadata', h('pre', { class: 'block' }, JSON.stringify(j.metadata, null, 2))) : null,
      ].flat().filter(Boolean));

      clear(result);
      const none = (t) => h('div', { class: 'muted' }, t);
      result.append(h('div', { class: 'section-title' }, 'Result data'),
        j.result_data != null ? h('pre', { class: 'block', id: 'result-data' }, JSON.stringify(j.result_data, null, 2)) : none(FINISHED.has(status) ? 'none' : 'not yet'));
      if (j.result_text) result.append(h('div', { class: 'section-title' }, 'Result text'), h('pre', { class: 'block' }, j.result_text));
      const files = Array.isArray(j.files) ? j.files : [];
      result.append(h('div', { class: 'section-title' }, 'Files'),
        files.length ? h('ul', { class: 'plain', id: 'files' }, files.map((f) => h('li', {},
          h('a', { href: '/jobs/' + enc(id) + '/files/' + enc(f.name), onclick: (e) => { e.preventDefault(); download(id, f.name); } }, f.name),
          h('span', { class: 'muted' }, fmtBytes(f.size)),
          h('span', { class: 'muted mono', title: 'sha256' }, (f.sha256 || '').slice(0, 12))))) : none('none'));
      if (Array.isArray(j.files_dropped) && j.files_dropped.length) result.append(h('div', { class: 'muted' }, 'Not kept (over the limits): ' + j.files_dropped.join(', ')));
      // Each delivery of its events, with every attempt and its answer.
      const list = Array.isArray(deliveries) ? deliveries : [];
      result.append(h('div', { class: 'section-title' }, 'Webhooks'),
        h('div', { id: 'webhooks' },
          list.length ? h('ul', { class: 'plain' }, list.map((d) => {
            const attempts = Array.isArray(d.attempts) ? d.attempts : [];
            const last = attempts.length ? attempts[attempts.length - 1] : null;
            return h('li', { class: 'delivery' },
              h('span', { class: 'mono' }, d.event + ' → ' + d.subscriber), ' ',
              badge(d.status, d.status === 'delivered' ? 'completed' : d.status === 'dead' ? 'aborted' : 'running'), ' ',
              h('span', { class: 'muted' }, attempts.length + ' attempt' + (attempts.length === 1 ? '' : 's') +
                (last && typeof last === 'object' ? ' · last: ' + (last.status != null ? 'HTTP ' + last.status : (last.error || last.verdict)) + ', ' + last.duration_ms + ' ms' : '')),
              h('button', { class: 'btn small', onclick: () => act('/webhooks/' + enc(d.id) + '/replay', 'POST', () => 'Delivery ' + d.id + ' will be sent again') }, 'Replay'));
          })) : none(FINISHED.has(status) ? 'none' : 'not yet (made when the job ends)')));
      if (logMode === 'poll') showTail();
    }

    function restartLog() {
      if (logSource) { logSource.close(); logSource = null; }
      clear(logEl);
      counts.stdout = counts.stderr = counts.build = counts.system = 0;
      shown = 0; dropped = 0; lastSeq = -1; ended = false;
      setMode('connecting');
      openLog();
    }

    const onEvent = (ev) => { if (ev && ev.data && ev.data.id === id) kickSoon(); };
    eventListeners.add(onEvent);
    openLog();

    return {
      nav: 'jobs',
      id,
      async refresh() {
        job = await api('/jobs/' + enc(id));
        // Deliveries are made when the job ends; before that there are none to ask for.
        deliveries = FINISHED.has(job.status) ? (await api('/jobs/' + enc(id) + '/webhooks')).deliveries : [];
        // The queue's state only matters while the job waits in it.
        const queues = job.status === 'queued' ? (await api('/queues')).queues : null;
        render(queues);
        // A stream that ended with a finished job is reopened when it runs again.
        if (ended && !FINISHED.has(job.status)) restartLog();
      },
      failed(e) {
        clear(title, h('h1', { class: 'mono' }, id), h('span', { id: 'job-status' }, badge(e.status === 404 ? 'not found' : 'unavailable', 'aborted')));
        clear(banner, h('div', { class: 'banner bad' }, e.message));
      },
      leave() {
        eventListeners.delete(onEvent);
        if (logSource) logSource.close();
        if (frame) cancelAnimationFrame(frame);
      },
    };
  }

  function fmtBytes(n) {
    if (n == null) return '';
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(1) + ' KiB';
    return (n / (1 << 20)).toFixed(1) + ' MiB';
  }

  // ---------------------------------------------------------------- dead entries

  function deadView(main, params) {
    let queue = params.get('queue') || '';
    const tabs = h('div', { class: 'filters' });
    const t = table(['Buried', 'Job', 'Reason', 'Error', 'Entry', ['', 'actions']]);
    t.tbody.id = 'dead';
    let armed = null;
    const retryAll = h('button', { class: 'btn', id: 'retry-all', onclick: () => {
      // Two clicks: the first arms it for a few seconds, the second runs it.
      if (!armed) {
        retryAll.textContent = 'Click again to retry all in ' + queue;
        armed = setTimeout(() => { armed = null; retryAll.textContent = 'Retry all'; }, 4000);
        return;
      }
      clearTimeout(armed); armed = null; retryAll.textContent = 'Retry all';
      act('/queues/' + enc(queue) + '/dead/retry', 'POST', (r) => r.retried + ' retried' + (r.refused && r.refused.length ? ', ' + r.refused.length + ' refused' : ''));
    } }, 'Retry all');
    append(main, [
      h('div', { class: 'page-head' }, h('h1', {}, 'Dead entries'), h('span', { class: 'spacer' }), tabs),
      h('section', { class: 'panel' },
        h('div', { class: 'panel-head' }, h('span', { class: 'hint' }, 'What a queue could not run: refused by validation or policy, or lost with its worker too many times. A retry puts the entry back in its queue.'), h('span', { class: 'spacer' }), retryAll),
        t.el),
    ]);

    function row(d) {
      const job = d.id || '';
      return h('tr', { 'data-dead': d.dead_id },
        h('td', {}, ago(d.at)),
        h('td', {}, job ? link('#/jobs/' + enc(job), job, { class: 'mono' }) : h('span', { class: 'muted' }, 'unreadable')),
        h('td', {}, d.reason || '—'),
        h('td', { class: 'err' }, d.error || ''),
        h('td', { class: 'mono muted' }, d.dead_id),
        h('td', { class: 'actions' }, h('button', { class: 'btn small', onclick: () => act('/queues/' + enc(d.queue) + '/dead/' + enc(d.dead_id) + '/retry', 'POST', (r) => 'Job ' + r.id + ' is back in ' + r.queue) }, 'Retry')));
    }

    return {
      nav: 'dead',
      async refresh() {
        const qs = (await api('/queues')).queues || [];
        const withDead = qs.filter((s) => s.dead > 0 || s.queue === queue);
        if (!queue && withDead.length) queue = withDead[0].queue;
        clear(tabs, ...withDead.map((s) => h('a', { href: '#/dead?queue=' + enc(s.queue), class: 'btn small' + (s.queue === queue ? ' primary' : '') }, s.queue + ' · ' + s.dead)));
        retryAll.disabled = !queue || !(qs.find((s) => s.queue === queue) || {}).dead;
        if (!queue) {
          clear(t.tbody);
          emptyRow(t.tbody, 6, 'No queue has dead entries.');
          return;
        }
        const dead = (await api('/queues/' + enc(queue) + '/dead?count=100')).dead || [];
        renderRows(t.tbody, dead.map((d) => Object.assign({ _t: Math.floor(Date.now() / 5000) }, d)), (d) => d.dead_id, row);
        emptyRow(t.tbody, 6, 'No dead entries in ' + queue + '.');
      },
      failed(e) { clear(t.tbody, h('tr', {}, h('td', { class: 'empty', colspan: 6 }, e.message))); },
    };
  }

  // ---------------------------------------------------------------- routing

  function route() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, qs] = raw.split('?');
    const params = new URLSearchParams(qs || '');
    if (current && current.leave) current.leave();
    clearTimeout(timer);
    const main = clear(document.getElementById('view'));
    const m = path.match(/^\/jobs\/(.+)$/);
    if (m) current = jobView(main, decodeURIComponent(m[1]));
    else if (path === '/jobs') current = jobsView(main, params);
    else if (path === '/dead') current = deadView(main, params);
    else current = overview(main);
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === current.nav);
    document.title = (m ? decodeURIComponent(m[1]) + ' · ' : '') + 'Dockhand';
    kick();
  }

  document.getElementById('search').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = document.getElementById('search-id');
    const id = input.value.trim();
    if (id) { location.hash = '#/jobs/' + enc(id); input.value = ''; input.blur(); }
  });
  window.addEventListener('hashchange', route);
  setLive('starting');
  route();
  openEvents();
}());
