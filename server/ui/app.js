// spanprof web UI: a dependency-free single-page app (ES2020, no build step).
//
// Routes (the server answers index.html for each of them):
//   /                  search by span/trace ID, recent span profiles, services
//   /profiles/{id}     one span profile (profile ID = local root span ID)
//   /traces/{id}       all span profiles of one trace, merged
//   /services/{name}   whole-process profile of a service over a time range, its spans by name
//   /services/{name}/spans/{span_name}  every span of one name: CPU distribution, heaviest, merged
//   /diff?left.…&right.…  two profiles compared (the parameters of /api/v1/diff)
//
// Every string that comes from the API is put into the page with textContent or
// setAttribute, never with innerHTML.
'use strict';

(() => {
  const HEX16 = /^[0-9a-fA-F]{16}$/;
  const HEX32 = /^[0-9a-fA-F]{32}$/;
  const TRACEPARENT = /^[0-9a-fA-F]{2}-([0-9a-fA-F]{32})-([0-9a-fA-F]{16})-[0-9a-fA-F]{2}$/;
  const DEFAULT_PERIOD_NS = 10_000_000; // 100 Hz
  const MAX_PROFILE_ID_BYTES = 128;
  const RANGES = [
    ['15m', 'Last 15 minutes', 15 * 60e3],
    ['1h', 'Last hour', 60 * 60e3],
    ['6h', 'Last 6 hours', 6 * 60 * 60e3],
    ['24h', 'Last 24 hours', 24 * 60 * 60e3],
  ];
  // What a service page shows: [value of ?spans=, option, the sentence that says it].
  const SPAN_SCOPES = [
    ['all', 'All CPU', 'All CPU samples of the service, inside spans or not.'],
    ['inside', 'Inside spans', 'Only the samples taken inside spans: every span profile of the service, added up.'],
    ['outside', 'Outside spans', 'Only the samples taken outside any span.'],
  ];
  const EXPORTS = [
    ['pprof', 'pprof', 'gzipped pprof protobuf: go tool pprof, Grafana Pyroscope', '.pb.gz'],
    ['folded', 'folded', 'folded stacks, one "a;b;c 12" per line: flamegraph.pl, inferno', '.folded.txt'],
    ['speedscope', 'speedscope', 'speedscope JSON file', '.speedscope.json'],
    ['svg', 'SVG', 'static flame graph image', null],
    ['json', 'JSON', 'this API response as JSON', null],
  ];

  const app = document.getElementById('app');
  const tooltip = document.getElementById('tooltip');
  const navSlot = document.getElementById('nav-search-slot');

  // ---------------------------------------------------------------- DOM helpers

  /** Creates an element. Children that are not Nodes become text nodes. */
  function h(tag, props, ...children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v == null || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k === 'dataset') Object.assign(e.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function setPage(title, ...nodes) {
    document.title = title ? `${title} — spanprof` : 'spanprof';
    hideTooltip();
    app.replaceChildren(...nodes.flat());
  }

  // ---------------------------------------------------------------- formatting

  const intFmt = new Intl.NumberFormat('en-US');
  const fmtInt = (n) => (Number.isFinite(n) ? intFmt.format(n) : '—');

  /** CPU time from nanoseconds: "130 ms", "1.20 s". */
  function fmtCpu(ns) {
    if (!Number.isFinite(ns)) return '—';
    if (ns === 0) return '0 ms';
    const a = Math.abs(ns);
    if (a >= 3600e9) return `${(ns / 3600e9).toFixed(1)} h`;
    if (a >= 120e9) return `${(ns / 60e9).toFixed(1)} min`;
    if (a >= 1e9) {
      const s = ns / 1e9;
      return `${s >= 10 ? s.toFixed(1) : s.toFixed(2)} s`;
    }
    if (a >= 1e6) {
      const ms = ns / 1e6;
      return `${ms >= 10 ? Math.round(ms) : ms.toFixed(1)} ms`;
    }
    if (a >= 1e3) return `${Math.round(ns / 1e3)} µs`;
    return `${Math.round(ns)} ns`;
  }

  function fmtPct(v, total) {
    if (!total || !Number.isFinite(v)) return '—';
    const p = (100 * v) / total;
    if (p > 0 && p < 0.1) return '<0.1%';
    return `${p.toFixed(1)}%`;
  }

  function fmtRel(ms) {
    if (!Number.isFinite(ms)) return '—';
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < -60) return 'in the future'; // clock skew between hosts
    if (s < 1) return 'just now';
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  /** Absolute local time; `compact` leaves out the year when it is this year. */
  function fmtAbs(ms, compact) {
    if (!Number.isFinite(ms)) return '—';
    const d = new Date(ms);
    if (Number.isNaN(d.getTime())) return '—';
    const opts = { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' };
    if (!compact || d.getFullYear() !== new Date().getFullYear()) opts.year = 'numeric';
    return d.toLocaleString(undefined, opts);
  }

  /** A relative time ("12 s ago") with the absolute time as title; refreshed every 5 s. */
  function timeEl(ms) {
    if (!Number.isFinite(ms)) return h('span', { class: 'muted' }, '—');
    return h('time', {
      datetime: new Date(ms).toISOString(),
      title: fmtAbs(ms),
      dataset: { ms: String(ms) },
    }, fmtRel(ms));
  }
  setInterval(() => {
    for (const t of document.querySelectorAll('time[data-ms]')) {
      const txt = fmtRel(Number(t.dataset.ms));
      if (t.textContent !== txt) t.textContent = txt;
    }
  }, 5000);

  /** Absolute time followed by the relative time. */
  function whenEl(ms) {
    if (!Number.isFinite(ms)) return h('span', { class: 'muted' }, '—');
    return h('span', { title: fmtAbs(ms) }, fmtAbs(ms, true), ' ', h('span', { class: 'muted' }, '(', timeEl(ms), ')'));
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body, message) {
      super(message);
      this.status = status;
      this.body = body;
      this.reason = body && typeof body === 'object' ? body.reason : undefined;
    }
  }

  async function api(path) {
    let res;
    try {
      res = await fetch(path, { headers: { Accept: 'application/json' } });
    } catch (e) {
      throw new ApiError(0, null, `Could not reach the spanprof server (${e && e.message ? e.message : e}).`);
    }
    let text = '';
    try {
      text = await res.text();
    } catch (e) {
      throw new ApiError(res.status, null, `The connection broke while reading the answer (${e.message}).`);
    }
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!res.ok) {
      const detail = body && typeof body.error === 'string' ? body.error : text.slice(0, 300).trim();
      throw new ApiError(res.status, body,
        `The server answered ${res.status}${res.statusText ? ' ' + res.statusText : ''}${detail ? ': ' + detail : '.'}`);
    }
    if (body === null || typeof body !== 'object') {
      throw new ApiError(res.status, null, 'The server sent an answer that is not JSON.');
    }
    return body;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- shared widgets

  /**
   * Why `v` is no profile ID (the server's rule: 1 to 128 bytes of UTF-8 without control
   * characters; 16 hex digits are a span ID, all zeros invalid), or null when it is one.
   */
  function profileIdProblem(v) {
    if (v === '') return 'it is empty';
    if (HEX16.test(v) && /^0+$/.test(v)) return 'the all-zero span ID is invalid';
    if (new TextEncoder().encode(v).length > MAX_PROFILE_ID_BYTES) return `it is longer than ${MAX_PROFILE_ID_BYTES} bytes`;
    if (/\p{Cc}/u.test(v)) return 'it holds control characters';
    return null;
  }

  /**
   * Parses what a person pasted: a span ID, a trace ID, a W3C traceparent, or any other
   * profile ID (profilers may label samples with arbitrary strings).
   */
  function parseId(raw) {
    const v = raw.trim();
    const hex = v.replace(/^0x/i, '');
    if (HEX16.test(hex) && !/^0+$/.test(hex)) return { kind: 'span', id: hex.toLowerCase(), url: `/profiles/${hex.toLowerCase()}` };
    if (HEX32.test(hex)) return { kind: 'trace', id: hex.toLowerCase(), url: `/traces/${hex.toLowerCase()}` };
    const tp = TRACEPARENT.exec(v);
    if (tp) return { kind: 'trace', id: tp[1].toLowerCase(), url: `/traces/${tp[1].toLowerCase()}` };
    if (profileIdProblem(v) === null) return { kind: 'profile', id: v, url: `/profiles/${enc(v)}` };
    return null;
  }

  function searchForm(idPrefix, big) {
    const input = h('input', {
      id: `${idPrefix}-input`,
      class: 'search-input',
      type: 'search',
      name: 'id',
      placeholder: big ? 'Span ID (16 hex digits), trace ID (32 hex digits) or profile ID' : 'Span, trace or profile ID',
      autocomplete: 'off',
      spellcheck: 'false',
      'aria-label': 'Span ID, trace ID or profile ID',
      'aria-describedby': `${idPrefix}-error`,
    });
    const err = h('div', { id: `${idPrefix}-error`, class: 'search-error', role: 'alert', hidden: true });
    const form = h('form', { class: big ? 'search big' : 'search compact', role: 'search' },
      h('div', { class: 'search-row' }, input, h('button', { type: 'submit', class: 'btn primary' }, big ? 'Open' : 'Go')),
      err);
    input.addEventListener('input', () => { err.hidden = true; input.removeAttribute('aria-invalid'); });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      const parsed = parseId(value);
      if (!parsed) {
        err.textContent = value === ''
          ? 'Enter a span ID (16 hex digits), a trace ID (32 hex digits) or a profile ID.'
          : `"${value.length > 80 ? value.slice(0, 80) + '…' : value}" is no ID: ${profileIdProblem(value)}. `
            + 'A span ID is 16 hex digits, a trace ID 32 hex digits, and any other profile ID up to 128 bytes of text.';
        err.hidden = false;
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      location.assign(parsed.url);
    });
    return { form, input };
  }

  function idLink(kind, id) {
    if (!id) return h('span', { class: 'muted' }, '—');
    const href = kind === 'trace' ? `/traces/${enc(id)}` : `/profiles/${enc(id)}`;
    return h('a', { class: 'mono id', href }, id);
  }

  function serviceLink(name) {
    if (!name) return h('span', { class: 'muted' }, '—');
    return h('a', { href: `/services/${enc(name)}` }, name);
  }

  function metaList(items) {
    return h('dl', { class: 'meta' },
      items.filter(Boolean).map(([label, value]) =>
        h('div', { class: 'meta-item' }, h('dt', null, label), h('dd', null, value))));
  }

  function labelChips(labels) {
    if (!labels || typeof labels !== 'object') return null;
    const keys = Object.keys(labels).sort();
    if (!keys.length) return null;
    return h('span', { class: 'chips' }, keys.map((k) => h('span', { class: 'chip' }, `${k}=${labels[k]}`)));
  }

  /** `name` as part of a download's file name, as the server names its exports. */
  function fileSafe(name) {
    return [...name].slice(0, 64).map((c) => (/^[A-Za-z0-9-]$/.test(c) ? c : '_')).join('');
  }

  function exportLinks(basePath, extraQuery, stem) {
    return h('nav', { class: 'exports', 'aria-label': 'Export this profile' },
      h('span', { class: 'exports-label' }, 'Export'),
      EXPORTS.map(([format, label, title, ext]) => {
        const q = new URLSearchParams(extraQuery || '');
        q.set('format', format);
        return h('a', {
          class: 'export',
          href: `${basePath}?${q.toString()}`,
          title,
          dataset: { format },
          download: ext ? `${stem}${ext}` : null,
          target: ext ? null : '_blank',
          rel: ext ? null : 'noopener',
        }, label);
      }));
  }

  function crumbs(...parts) {
    const out = [];
    parts.forEach((p, i) => {
      if (i) out.push(h('span', { class: 'sep', 'aria-hidden': 'true' }, '/'));
      out.push(Array.isArray(p) ? h('a', { href: p[1] }, p[0]) : h('span', null, p));
    });
    return h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, out);
  }

  function loadingEl(what) {
    return h('p', { class: 'loading' }, `Loading ${what}…`);
  }

  function messagePage(title, kind, ...body) {
    setPage(title, h('section', { class: `message ${kind}` }, h('h1', null, title), body));
  }

  function errorPage(what, err, retry) {
    messagePage(`Could not load ${what}`, 'error',
      h('p', { class: 'error-box' }, err && err.message ? err.message : String(err)),
      h('p', null,
        retry ? h('button', { class: 'btn primary', type: 'button', onclick: retry }, 'Try again') : null,
        ' ', h('a', { class: 'btn', href: '/' }, 'Back to search')));
  }

  function unknownIdPage(kind, id) {
    const s = searchForm('retry-search', true);
    s.input.value = id;
    const other = kind === 'profile' && HEX32.test(id) ? ['trace', `/traces/${id.toLowerCase()}`]
      : kind === 'trace' && profileIdProblem(id) === null ? ['profile', `/profiles/${enc(id)}`] : null;
    messagePage('Unknown ID', 'unknown',
      h('p', null, '“', h('code', null, id.length > 120 ? id.slice(0, 120) + '…' : id), `” is not a valid ${kind} ID.`),
      h('p', null, 'A span ID is 16 hexadecimal digits (for example ', h('code', null, '00f067aa0ba902b7'),
        ') and a trace ID is 32 (for example ', h('code', null, '4bf92f3577b34da6a3ce929d0e0e4736'),
        '). Profilers that label samples with other profile IDs may use any text of up to 128 bytes without control characters.'),
      other ? h('p', null, 'This looks like a ', other[0], ' ID: ', h('a', { href: other[1] }, `open the ${other[0]} page`), '.') : null,
      s.form);
  }

  /** "No samples yet" page that checks again by itself every 10 s, `retriesLeft` more times. */
  function noSamplesPage(kind, id, reload, retriesLeft) {
    const status = h('p', { class: 'muted retry-status', 'aria-live': 'polite' });
    const retryBtn = h('button', { class: 'btn primary', type: 'button', onclick: () => reload({}) }, 'Retry now');
    const what = kind === 'trace' ? 'trace' : HEX16.test(id) ? 'span' : 'profile';
    messagePage(`No samples for this ${what} yet`, 'empty',
      h('p', null, `spanprof has no CPU samples for ${what} ID `, h('code', { class: 'mono' }, id), ' yet.'),
      h('ul', { class: 'reasons' },
        h('li', null, h('strong', null, 'Short spans may have no samples. '),
          'The sampler takes one sample per sampling period of CPU time: 10 ms at the default 100 Hz. ',
          `A ${what} that used less CPU than that may never be sampled.`),
        h('li', null, h('strong', null, 'Uploads are batched. '),
          'The sidecar uploads every 10 s, so a request that just finished may not be here yet. Retry shortly.'),
        kind === 'trace'
          ? h('li', null, 'Only services whose pods run the spanprof sampler produce span profiles.')
          : what === 'span'
            ? h('li', null, 'The profile ID is the span ID of the local root span: the first span this process created for the request.')
            : h('li', null, 'A profile ID that is not a span ID is matched exactly, case included.')),
      h('p', { class: 'actions' }, retryBtn, ' ', h('a', { class: 'btn', href: '/' }, 'Back to search')),
      status);
    if (!(retriesLeft > 0)) {
      status.textContent = 'Still no samples. Use “Retry now” to check again.';
      return;
    }
    let secs = 10;
    status.textContent = `Checking again in ${secs} s…`;
    const timer = setInterval(() => {
      if (!status.isConnected) { clearInterval(timer); return; }
      secs -= 1;
      if (secs > 0) { status.textContent = `Checking again in ${secs} s…`; return; }
      clearInterval(timer);
      status.textContent = 'Checking…';
      reload({ quiet: true, retriesLeft: retriesLeft - 1 });
    }, 1000);
  }

  // ---------------------------------------------------------------- tooltip

  function showTooltip(children, x, y) {
    tooltip.replaceChildren(...children);
    tooltip.hidden = false;
    const pad = 14;
    const r = tooltip.getBoundingClientRect();
    let left = x + pad;
    let top = y + pad;
    if (left + r.width > window.innerWidth - 8) left = Math.max(8, x - r.width - pad);
    if (top + r.height > window.innerHeight - 8) top = Math.max(8, y - r.height - pad);
    tooltip.style.left = `${left}px`;
    tooltip.style.top = `${top}px`;
  }

  function hideTooltip() {
    tooltip.hidden = true;
  }

  // ---------------------------------------------------------------- flame graph

  const ROW_PX = 18;
  const LABEL_MIN_PX = 20; // frames narrower than this get no text label
  const MAX_FRAMES = 12000; // DOM elements per render; the width threshold grows to stay under it

  function hashString(s) {
    let x = 2166136261;
    for (let i = 0; i < s.length; i++) {
      x ^= s.charCodeAt(i);
      x = Math.imul(x, 16777619);
    }
    return x >>> 0;
  }

  const colourCache = new Map();
  /** A stable warm colour per function name. */
  function frameColour(name) {
    let c = colourCache.get(name);
    if (c) return c;
    const x = hashString(name);
    const hue = 8 + (x % 44); // red → orange → yellow
    const sat = 72 + ((x >>> 8) % 20);
    const light = 56 + ((x >>> 16) % 12);
    c = `hsl(${hue} ${sat}% ${light}%)`;
    if (colourCache.size > 50000) colourCache.clear();
    colourCache.set(name, c);
    return c;
  }

  /**
   * Decodes the API's flame-graph encoding (Pyroscope's flamebearer) into a node tree:
   * `levels[d]` holds the bars at depth d left to right, each `[x offset, total, self]` for every
   * one of `sides` profiles (1 for a flame graph, 2 for a diff), then the name index; each offset
   * is counted from the end of the bar before it on that side. A bar's parent is the bar one
   * level up that spans it on every side where it has samples; both levels are left to right,
   * so one pass per level finds them. `make(name, totals, selfs)` builds each node.
   */
  function treeFromBars(fg, sides, make) {
    const empty = make('total', new Array(sides).fill(0), new Array(sides).fill(0));
    if (!fg || typeof fg !== 'object' || !Array.isArray(fg.levels)) return empty;
    const names = Array.isArray(fg.names) ? fg.names : [];
    const merged = (fg.dropped_nodes || 0) > 0;
    const width = 3 * sides + 1;
    let root = null;
    let prev = [];
    for (let d = 0; d < fg.levels.length; d++) {
      const v = Array.isArray(fg.levels[d]) ? fg.levels[d] : [];
      const cur = [];
      const end = new Array(sides).fill(0);
      let pi = 0;
      for (let i = 0; i + width - 1 < v.length; i += width) {
        const x = [];
        const totals = [];
        const selfs = [];
        for (let k = 0; k < sides; k++) {
          x.push(end[k] + (Number(v[i + 3 * k]) || 0));
          totals.push(Number(v[i + 3 * k + 1]) || 0);
          selfs.push(Number(v[i + 3 * k + 2]) || 0);
          end[k] = x[k] + totals[k];
        }
        const name = names[v[i + 3 * sides]];
        const n = make(name == null ? '(unknown)' : String(name), totals, selfs);
        if (d === 0) {
          if (root) continue;
          root = n;
        } else {
          const holds = (q) => totals.every((t, k) => t === 0 || (q.x[k] <= x[k] && x[k] + t <= q.x[k] + q.totals[k]));
          while (pi < prev.length && !holds(prev[pi])) pi++;
          const p = prev[pi];
          if (!p) { pi = 0; continue; } // malformed: a bar outside every parent
          if (merged && n.name === 'other') n.merged = true;
          p.n.children.push(n);
        }
        cur.push({ n, x, totals });
      }
      prev = cur;
    }
    return root || empty;
  }

  /** The node tree of a flame graph (`flamegraph` of the profile endpoints). */
  function treeFromLevels(fg) {
    return treeFromBars(fg, 1, (name, [total], [self]) => ({ name, total, self, children: [] }));
  }

  /**
   * The node tree of a diff flame graph (`/api/v1/diff`). A node's width is its share of the
   * left side plus its share of the right side, so both sides count alike whatever their sizes;
   * `left`/`right` keep the samples.
   */
  function treeFromDiffLevels(fg) {
    const L = Number(fg && fg.left_ticks) || 0;
    const R = Number(fg && fg.right_ticks) || 0;
    const share = (l, r) => (L ? l / L : 0) + (R ? r / R : 0);
    return treeFromBars(fg, 2, (name, [left, right], [leftSelf, rightSelf]) => ({
      name, left, right, leftSelf, rightSelf, total: share(left, right), self: share(leftSelf, rightSelf), children: [],
    }));
  }

  /** How a node's share changed from the left side to the right one, in parts of 1. */
  function diffChange(n, d) {
    return (d.right ? n.right / d.right : 0) - (d.left ? n.left / d.left : 0);
  }

  /** Red for a larger share on the right, green for a smaller one, grey for about the same. */
  function diffColour(change) {
    const t = Math.min(1, Math.abs(change) / 0.25);
    if (Math.abs(change) < 0.005) return 'hsl(220, 12%, 86%)';
    const light = Math.round(88 - 40 * t);
    return change > 0 ? `hsl(0, 75%, ${light}%)` : `hsl(140, 55%, ${light}%)`;
  }

  class FlameGraph {
    /**
     * @param {object} root   Node tree ({name, self, total, children}), root named "total"
     * @param {number} period nanoseconds of CPU time per sample
     * @param {object} [diff] for a diff graph: the sides' totals, {left, right} samples
     */
    constructor(root, period, diff) {
      this.root = root;
      this.diff = diff || null;
      this.period = period || DEFAULT_PERIOD_NS;
      this.focus = root;
      this.term = '';
      this.nodes = [];
      this.lastWidth = 0;
      this.maxDepth = this.prepare(root);
      this.total = root.total || 0;

      this.searchInput = h('input', {
        class: 'fg-search', id: 'fg-search', type: 'search', placeholder: 'Search functions…',
        'aria-label': 'Search functions in the flame graph', autocomplete: 'off', spellcheck: 'false',
      });
      this.matchInfo = h('span', { class: 'fg-match', id: 'fg-match', 'aria-live': 'polite' });
      this.resetBtn = h('button', { class: 'btn', id: 'fg-reset', type: 'button', disabled: true }, 'Reset zoom');
      this.zoomInfo = h('span', { class: 'fg-zoom muted' });
      this.graph = h('div', { class: 'flamegraph', id: 'flamegraph', role: 'img', 'aria-label': 'Flame graph' });
      this.note = h('p', { class: 'fg-note muted' });
      this.boundNote = h('p', { class: 'fg-bound', id: 'fg-bound' });
      this.el = h('section', { class: 'card fg-card' },
        h('div', { class: 'card-head' },
          h('h2', null, 'Flame graph'),
          h('div', { class: 'fg-toolbar' }, this.zoomInfo, this.matchInfo, this.searchInput, this.resetBtn)),
        h('p', { class: 'hint muted' }, diff
          ? 'Width is a function\'s share of both sides. Click a frame to zoom in, click a bar above it to zoom out; hover for both values.'
          : 'Width is CPU time. Click a frame to zoom in, click a bar above it to zoom out; hover for details.'),
        this.boundNote, this.graph, this.note);

      let searchTimer = 0;
      this.searchInput.addEventListener('input', () => {
        clearTimeout(searchTimer);
        searchTimer = setTimeout(() => this.search(this.searchInput.value), 120);
      });
      this.searchInput.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') { clearTimeout(searchTimer); this.search(this.searchInput.value); }
        if (e.key === 'Escape') { this.searchInput.value = ''; this.search(''); }
      });
      this.resetBtn.addEventListener('click', () => this.zoom(this.root));
      this.graph.addEventListener('click', (e) => {
        const f = e.target.closest('.frame');
        if (!f) return;
        const n = this.nodes[Number(f.dataset.idx)];
        if (n) this.zoom(n === this.focus && n._parent ? n._parent : n);
      });
      this.graph.addEventListener('mousemove', (e) => {
        const f = e.target.closest('.frame');
        if (!f) { hideTooltip(); return; }
        const n = this.nodes[Number(f.dataset.idx)];
        if (n) showTooltip(this.tooltipContent(n), e.clientX, e.clientY);
      });
      this.graph.addEventListener('mouseleave', hideTooltip);

      if (typeof ResizeObserver === 'function') {
        let raf = 0;
        new ResizeObserver(() => {
          cancelAnimationFrame(raf);
          raf = requestAnimationFrame(() => {
            if (this.graph.clientWidth && this.graph.clientWidth !== this.lastWidth) this.render();
          });
        }).observe(this.graph);
      } else {
        window.addEventListener('resize', () => this.render());
      }
    }

    /** Shows another tree (e.g. every node after "Show all"), keeping the search term. */
    setRoot(root) {
      this.root = root;
      this.focus = root;
      this.maxDepth = this.prepare(root);
      this.total = root.total || 0;
      this.resetBtn.disabled = true;
      this.zoomInfo.textContent = '';
      this.render();
      if (this.term) this.search(this.term);
    }

    /**
     * Says when the server merged small call paths into "other" frames, with a button that loads
     * every node (`loadAll` resolves to the API's whole flame graph).
     */
    showBound(fg, loadAll) {
      const dropped = (fg && fg.dropped_nodes) || 0;
      if (!dropped) { this.boundNote.replaceChildren(); return; }
      const all = fg.total_nodes || 0;
      const btn = h('button', { class: 'btn', id: 'fg-show-all', type: 'button' }, `Show all ${fmtInt(all)}`);
      btn.addEventListener('click', async () => {
        btn.disabled = true;
        btn.textContent = 'Loading…';
        try {
          const full = await loadAll();
          this.setRoot(treeFromLevels(full));
          this.boundNote.replaceChildren(`Showing all ${fmtInt(full.nodes || all)} call-tree nodes.`);
        } catch (e) {
          btn.disabled = false;
          btn.textContent = `Show all ${fmtInt(all)}`;
          this.boundNote.append(h('span', { class: 'error-inline' }, ` Could not load them: ${e.message}`));
        }
      });
      this.boundNote.replaceChildren(
        `Showing ${fmtInt(fg.nodes)} of ${fmtInt(all)} call-tree nodes: the ${fmtInt(dropped)} smallest are merged into "other" frames, so every total stays exact. `,
        loadAll ? btn : '',
        ' The exports above hold every stack.');
    }

    /** Adds parent/depth to every node, without recursion (stacks can be very deep). */
    prepare(root) {
      let maxDepth = 0;
      root._parent = null;
      root._depth = 0;
      const stack = [root];
      while (stack.length) {
        const n = stack.pop();
        if (typeof n.name !== 'string') n.name = n.name == null ? '(unknown)' : String(n.name);
        if (!Number.isFinite(n.total)) n.total = 0;
        if (!Number.isFinite(n.self)) n.self = 0;
        if (!Array.isArray(n.children)) n.children = [];
        if (n._depth > maxDepth) maxDepth = n._depth;
        for (const c of n.children) {
          c._parent = n;
          c._depth = n._depth + 1;
          stack.push(c);
        }
      }
      return maxDepth;
    }

    diffTooltip(n) {
      const d = this.diff;
      const change = diffChange(n, d);
      const pts = `${change > 0 ? '+' : change < 0 ? '−' : '±'}${Math.abs(change * 100).toFixed(1)} points`;
      return [
        h('div', { class: 'tt-name' }, n.merged ? 'other (smaller call paths, merged)' : n.name),
        h('div', { class: 'tt-row' }, h('span', { class: 'tt-k' }, 'Left'),
          `${fmtInt(n.left)} samples · ${fmtPct(n.left, d.left)} of the left (self ${fmtInt(n.leftSelf)})`),
        h('div', { class: 'tt-row' }, h('span', { class: 'tt-k' }, 'Right'),
          `${fmtInt(n.right)} samples · ${fmtPct(n.right, d.right)} of the right (self ${fmtInt(n.rightSelf)})`),
        h('div', { class: 'tt-row' }, h('span', { class: 'tt-k' }, 'Change'), `${pts} of its side's CPU`),
        h('div', { class: 'tt-hint' }, n === this.focus && n._parent ? 'Click to zoom out' : 'Click to zoom'),
      ];
    }

    tooltipContent(n) {
      if (this.diff) return this.diffTooltip(n);
      const p = this.period;
      const rows = [
        h('div', { class: 'tt-name' }, n.merged ? 'other (smaller call paths, merged)' : n.name),
        h('div', { class: 'tt-row' }, h('span', { class: 'tt-k' }, 'Total'),
          `${fmtInt(n.total)} samples · ${fmtCpu(n.total * p)} · ${fmtPct(n.total, this.total)} of total`),
        h('div', { class: 'tt-row' }, h('span', { class: 'tt-k' }, 'Self'),
          `${fmtInt(n.self)} samples · ${fmtCpu(n.self * p)} · ${fmtPct(n.self, this.total)} of total`),
      ];
      if (this.focus !== this.root && n._depth > this.focus._depth) {
        rows.push(h('div', { class: 'tt-row muted' }, `${fmtPct(n.total, this.focus.total)} of the zoomed frame`));
      }
      rows.push(h('div', { class: 'tt-hint' }, n === this.focus && n._parent ? 'Click to zoom out' : 'Click to zoom'));
      return rows;
    }

    matches(n) {
      return this.term !== '' && n !== this.root && n.name.toLowerCase().includes(this.term);
    }

    search(term) {
      this.term = (term || '').trim().toLowerCase();
      if (!this.term) {
        this.matchInfo.textContent = '';
      } else {
        // Sum of the totals of matching frames, without counting a match inside a match twice.
        let matched = 0;
        const stack = [[this.root, false]];
        while (stack.length) {
          const [n, inside] = stack.pop();
          let inMatch = inside;
          if (!inside && this.matches(n)) { matched += n.total; inMatch = true; }
          if (!inMatch) for (const c of n.children) stack.push([c, false]);
        }
        this.matchInfo.textContent = `matched: ${fmtPct(matched, this.total)} of total`;
      }
      for (const f of this.graph.children) {
        const n = this.nodes[Number(f.dataset.idx)];
        if (n) f.classList.toggle('highlighted', this.matches(n));
      }
    }

    zoom(n) {
      this.focus = n || this.root;
      this.resetBtn.disabled = this.focus === this.root;
      this.zoomInfo.textContent = this.focus === this.root ? '' : `Zoomed: ${fmtPct(this.focus.total, this.total)} of total`;
      hideTooltip();
      this.render();
    }

    countVisible(focus, scale, minPx) {
      let count = 0;
      const stack = [focus];
      while (stack.length) {
        const n = stack.pop();
        count++;
        if (count > MAX_FRAMES) return count;
        for (const c of n.children) if (c.total * scale >= minPx) stack.push(c);
      }
      return count;
    }

    render() {
      const t0 = performance.now();
      const W = this.graph.clientWidth;
      if (!W) return;
      this.lastWidth = W;
      if (!this.total) {
        this.graph.style.height = 'auto';
        this.graph.replaceChildren(h('p', { class: 'empty-graph' }, 'This profile has no samples.'));
        return;
      }
      const F = this.focus;
      const scale = W / (F.total || 1);
      let minPx = 0.5;
      while (this.countVisible(F, scale, minPx) > MAX_FRAMES && minPx < W) minPx *= 2;

      const frag = document.createDocumentFragment();
      this.nodes = [];
      let maxRow = 0;
      let hidden = 0;
      const add = (n, x, w, row, extra) => {
        const d = document.createElement('div');
        let cls = 'frame';
        if (extra) cls += ' ' + extra;
        if (n === this.root) cls += ' root';
        if (n.merged) cls += ' merged';
        if (w < LABEL_MIN_PX) cls += ' narrow';
        if (this.matches(n)) cls += ' highlighted';
        let colour = n !== this.root && !n.merged ? frameColour(n.name) : null;
        if (this.diff && n !== this.root) {
          const change = diffChange(n, this.diff);
          colour = diffColour(change);
          if (change >= 0.005) cls += ' diff-more';
          else if (change <= -0.005) cls += ' diff-less';
        }
        d.className = cls;
        // Numbers and our own colour only: no API string goes into cssText.
        d.style.cssText = `left:${((100 * x) / W).toFixed(4)}%;width:${((100 * w) / W).toFixed(4)}%;top:${row * ROW_PX}px`
          + (colour ? `;background-color:${colour}` : '');
        d.setAttribute('data-name', n.name);
        d.setAttribute('data-idx', String(this.nodes.length));
        // A label cannot show even one character in a narrow frame; leaving it out
        // keeps layout fast with thousands of frames (the name is in data-name and the tooltip).
        if (w >= LABEL_MIN_PX) d.textContent = n.name;
        this.nodes.push(n);
        frag.appendChild(d);
        if (row > maxRow) maxRow = row;
      };
      // Ancestors of the zoomed frame: full-width bars above it.
      const ancestors = [];
      for (let a = F._parent; a; a = a._parent) ancestors.push(a);
      ancestors.reverse().forEach((a, i) => add(a, 0, W, i, 'ancestor'));
      // The zoomed frame and everything under it that is wide enough to see.
      const stack = [[F, 0]];
      while (stack.length) {
        const [n, x] = stack.pop();
        add(n, x, n.total * scale, n._depth, n === F && F !== this.root ? 'focus' : '');
        let cx = x;
        const ch = n.children;
        for (let i = 0; i < ch.length; i++) {
          const c = ch[i];
          const cw = c.total * scale;
          if (cw >= minPx) stack.push([c, cx]);
          else hidden++;
          cx += cw;
        }
      }
      this.graph.style.height = `${(maxRow + 1) * ROW_PX}px`;
      this.graph.replaceChildren(frag);
      this.renders = (this.renders || 0) + 1;
      this.graph.dataset.renderMs = String(Math.round(performance.now() - t0));
      this.graph.dataset.renderedAt = String(Math.round(performance.now()));
      this.graph.dataset.renders = String(this.renders);
      this.note.textContent = hidden
        ? `${fmtInt(this.nodes.length)} frames shown; ${fmtInt(hidden)} call paths narrower than ${minPx} px are hidden — zoom in to see them.`
        : '';
    }
  }

  // ---------------------------------------------------------------- top functions

  function topTable(top, rootTotal, period, onPick) {
    const rows = Array.isArray(top) ? top.slice() : [];
    const cols = [
      { key: 'name', label: 'Function', num: false },
      { key: 'self', label: 'Self', num: true },
      { key: 'selfPct', label: 'Self %', num: true, by: 'self' },
      { key: 'total', label: 'Total', num: true },
      { key: 'totalPct', label: 'Total %', num: true, by: 'total' },
    ];
    let sortKey = 'self';
    let desc = true;
    let limit = 100;
    const thead = h('thead');
    const tbody = h('tbody');
    const more = h('p', { class: 'table-more' });
    const table = h('table', { class: 'data top-table', id: 'top-table' }, thead, tbody);

    const valueCell = (v) => h('td', { class: 'num' }, fmtCpu(v * period), h('span', { class: 'samples' }, fmtInt(v)));
    const pctCell = (v) => {
      const p = rootTotal ? Math.min(100, (100 * v) / rootTotal) : 0;
      const td = h('td', { class: 'num pct' }, fmtPct(v, rootTotal));
      td.style.setProperty('--p', `${p.toFixed(2)}%`);
      return td;
    };

    function draw() {
      const by = (cols.find((c) => c.key === sortKey) || cols[1]).by || sortKey;
      rows.sort((a, b) => {
        const r = by === 'name' ? String(a.name).localeCompare(String(b.name)) : (a[by] || 0) - (b[by] || 0);
        return desc ? -r : r;
      });
      thead.replaceChildren(h('tr', null, cols.map((c) => {
        const active = (c.by || c.key) === by && (c.key === sortKey);
        const th = h('th', {
          class: c.num ? 'num sortable' : 'sortable',
          scope: 'col',
          'aria-sort': active ? (desc ? 'descending' : 'ascending') : 'none',
          dataset: { key: c.key },
        }, h('button', { type: 'button', class: 'sort-btn' }, c.label,
          h('span', { class: 'sort-ind', 'aria-hidden': 'true' }, active ? (desc ? ' ▼' : ' ▲') : '')));
        th.addEventListener('click', () => {
          if (sortKey === c.key) desc = !desc;
          else { sortKey = c.key; desc = c.key !== 'name'; }
          draw();
        });
        return th;
      })));
      if (!rows.length) {
        tbody.replaceChildren(h('tr', null, h('td', { colspan: 5, class: 'empty' }, 'No functions.')));
      } else {
        tbody.replaceChildren(...rows.slice(0, limit).map((r) => h('tr', null,
          h('td', { class: 'fn' }, h('button', {
            type: 'button', class: 'fn-btn', title: `Highlight ${r.name} in the flame graph`,
            onclick: () => onPick && onPick(r.name),
          }, String(r.name))),
          valueCell(r.self || 0), pctCell(r.self || 0), valueCell(r.total || 0), pctCell(r.total || 0))));
      }
      more.replaceChildren();
      if (rows.length > limit) {
        more.append(`Showing ${fmtInt(limit)} of ${fmtInt(rows.length)} functions. `,
          h('button', { type: 'button', class: 'btn', onclick: () => { limit = rows.length; draw(); } }, 'Show all'));
      }
    }
    draw();
    return h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', null, 'Top functions'),
        h('span', { class: 'muted' }, 'Self: CPU spent in the function itself. Total: including its callees. % of the whole profile.')),
      h('div', { class: 'table-wrap' }, table), more);
  }

  /** Flame graph + top table, wired together. Returns the nodes to insert. */
  function profileBody(flamegraph, top, period, apiPath) {
    const root = treeFromLevels(flamegraph);
    const fg = new FlameGraph(root, period);
    const loadAll = apiPath ? async () => {
      const sep = apiPath.includes('?') ? '&' : '?';
      return (await api(`${apiPath}${sep}max_nodes=0`)).flamegraph;
    } : null;
    fg.showBound(flamegraph, loadAll);
    const pick = (name) => {
      fg.searchInput.value = name;
      fg.search(name);
      fg.el.scrollIntoView({ behavior: 'smooth', block: 'start' });
    };
    const table = topTable(top, root.total || 0, fg.period, pick);
    return { nodes: [fg.el, table], after: () => fg.render() };
  }

  // ---------------------------------------------------------------- pages

  function mountNavSearch(show) {
    navSlot.replaceChildren();
    if (show) navSlot.append(searchForm('nav-search', false).form);
  }

  // ---- home

  function renderHome() {
    mountNavSearch(false);
    const params = new URLSearchParams(location.search);
    const search = searchForm('search', true);

    const services = h('div', { class: 'services-list', id: 'services-list' }, loadingEl('services'));
    const datalist = h('datalist', { id: 'services-datalist' });
    const fService = h('input', {
      id: 'filter-service', type: 'search', placeholder: 'Service', list: 'services-datalist',
      'aria-label': 'Filter by service', autocomplete: 'off', value: params.get('service') || '',
    });
    const fSpan = h('input', {
      id: 'filter-span', type: 'search', placeholder: 'Span name', 'aria-label': 'Filter by span name',
      autocomplete: 'off', value: params.get('span_name') || '',
    });
    const tbody = h('tbody');
    const status = h('p', { class: 'table-status', 'aria-live': 'polite' });
    const loadMore = h('button', { class: 'btn', id: 'load-more', type: 'button', hidden: true }, 'Load more');
    const table = h('table', { class: 'data recent-table', id: 'recent-table' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, 'Service'), h('th', { scope: 'col' }, 'Span'),
        h('th', { scope: 'col' }, 'Span ID'), h('th', { scope: 'col' }, 'Trace ID'),
        h('th', { scope: 'col', class: 'num' }, 'Samples'), h('th', { scope: 'col', class: 'num' }, 'CPU time'),
        h('th', { scope: 'col' }, 'Last seen'))),
      tbody);

    setPage('',
      h('section', { class: 'hero' },
        h('h1', null, 'Find a request’s CPU profile'),
        h('p', { class: 'muted' }, 'Paste the span ID of a local root span (the profile ID) or a trace ID from your tracing tool.'),
        search.form),
      h('section', { class: 'card' },
        h('div', { class: 'card-head' }, h('h2', null, 'Services'),
          h('span', { class: 'muted' }, 'Whole-process CPU profiles, including samples outside any span.')),
        services),
      h('section', { class: 'card' },
        h('div', { class: 'card-head' }, h('h2', null, 'Recent span profiles'),
          h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); reload(); } },
            fService, datalist, fSpan, h('button', { class: 'btn', type: 'submit' }, 'Filter'))),
        h('div', { class: 'table-wrap' }, table),
        h('div', { class: 'table-foot' }, status, loadMore)));
    search.input.focus();

    // services
    api('/api/v1/services').then((body) => {
      const list = Array.isArray(body.services) ? body.services : [];
      datalist.replaceChildren(...list.map((s) => h('option', { value: s })));
      if (!list.length) {
        services.replaceChildren(h('p', { class: 'muted' },
          'No services yet. They appear once a spanprof sidecar (or a Pyroscope SDK) pushes profiles to this server.'));
      } else {
        services.replaceChildren(h('ul', { class: 'service-chips' },
          list.map((s) => h('li', null, h('a', { class: 'service-chip', href: `/services/${enc(s)}` }, s)))));
      }
    }).catch((e) => {
      services.replaceChildren(h('p', { class: 'error-box' }, `Could not load services. ${e.message}`));
    });

    // recent profiles
    let cursor = null;
    let gen = 0;
    let shown = 0;

    function row(p) {
      return h('tr', { dataset: { profileId: p.profile_id || '' } },
        h('td', null, serviceLink(p.service_name)),
        h('td', { class: 'span-name' }, p.span_name || h('span', { class: 'muted' }, '(unnamed)')),
        h('td', null, idLink('span', p.profile_id)),
        h('td', null, idLink('trace', p.trace_id)),
        h('td', { class: 'num' }, fmtInt(p.samples)),
        h('td', { class: 'num' }, fmtCpu(p.cpu_ns)),
        h('td', null, timeEl(p.last_seen_ms)));
    }

    async function load(reset) {
      const my = reset ? ++gen : gen;
      const q = new URLSearchParams();
      const svc = fService.value.trim();
      const span = fSpan.value.trim();
      if (svc) q.set('service', svc);
      if (span) q.set('span_name', span);
      q.set('limit', '50');
      if (!reset && cursor) q.set('cursor', cursor);
      if (reset) {
        const pageQ = new URLSearchParams();
        if (svc) pageQ.set('service', svc);
        if (span) pageQ.set('span_name', span);
        const qs = pageQ.toString();
        history.replaceState(null, '', qs ? `/?${qs}` : '/');
      }
      status.textContent = 'Loading…';
      status.classList.remove('error-box');
      loadMore.disabled = true;
      try {
        const body = await api(`/api/v1/profiles?${q.toString()}`);
        if (my !== gen) return;
        const list = Array.isArray(body.profiles) ? body.profiles : [];
        if (reset) { tbody.replaceChildren(); shown = 0; }
        tbody.append(...list.map(row));
        shown += list.length;
        cursor = body.next_cursor || null;
        loadMore.hidden = !cursor;
        loadMore.disabled = false;
        if (!shown) {
          tbody.replaceChildren(h('tr', null, h('td', { colspan: 7, class: 'empty' },
            svc || span
              ? 'No span profiles match these filters (service and span name must match exactly).'
              : 'No span profiles yet. A span profile appears here once the sidecar has uploaded samples for a traced request (every 10 s).')));
          status.textContent = '';
        } else {
          status.textContent = `${fmtInt(shown)} span profile${shown === 1 ? '' : 's'}${cursor ? ' shown' : ''}, newest first.`;
        }
      } catch (e) {
        if (my !== gen) return;
        loadMore.disabled = false;
        status.textContent = `Could not load span profiles. ${e.message}`;
        status.classList.add('error-box');
      }
    }
    function reload() {
      applied = `${fService.value.trim()}\n${fSpan.value.trim()}`;
      cursor = null;
      load(true);
    }

    // The API matches service and span name exactly: filter on Enter, on the Filter button,
    // on picking a service from the list, or when a field is cleared (not on every keystroke).
    let applied = `${fService.value.trim()}\n${fSpan.value.trim()}`;
    const maybeReload = () => {
      const now = `${fService.value.trim()}\n${fSpan.value.trim()}`;
      if (now !== applied) reload();
    };
    fService.addEventListener('change', maybeReload);
    fService.addEventListener('input', () => { if (!fService.value || [...datalist.options].some((o) => o.value === fService.value)) maybeReload(); });
    fSpan.addEventListener('input', () => { if (!fSpan.value) maybeReload(); });
    loadMore.addEventListener('click', () => load(false));
    reload();
  }

  // ---- one span profile

  /**
   * The start of a page of one ID, a span profile's or a trace's: the ID in lowercase in the URL,
   * a loading page, then the API's answer — or the page that says why there is none (no samples
   * yet, retried with `render`; a malformed ID; an error) and `null`.
   */
  async function loadIdPage(kind, rawId, opts, render) {
    const trace = kind === 'trace';
    const path = trace ? 'traces' : 'profiles';
    let id = rawId;
    if ((trace ? HEX32 : HEX16).test(id) && id !== id.toLowerCase()) {
      id = id.toLowerCase();
      history.replaceState(null, '', `/${path}/${id}`);
    }
    if (!opts.quiet) setPage(trace ? 'Trace' : 'Span profile', loadingEl(kind));
    try {
      return { id, body: await api(`/api/v1/${path}/${enc(id)}`) };
    } catch (e) {
      if (e.status === 404 && e.reason === 'no_samples') {
        noSamplesPage(kind, id, (o) => render(id, o), opts.retriesLeft ?? 6);
      } else if (e.status === 400) {
        unknownIdPage(kind, id);
      } else {
        errorPage(trace ? 'this trace' : 'this span profile', e, () => render(id));
      }
      return null;
    }
  }

  async function renderProfile(rawId, opts = {}) {
    mountNavSearch(true);
    const loaded = await loadIdPage('profile', rawId, opts, renderProfile);
    if (!loaded) return;
    const { id, body } = loaded;
    const p = body.profile || {};
    const period = body.period_ns || DEFAULT_PERIOD_NS;
    const pid = p.profile_id || id;
    const isSpan = HEX16.test(pid);
    const { nodes, after } = profileBody(body.flamegraph, body.top, period, `/api/v1/profiles/${enc(pid)}`);
    setPage(`${p.span_name || 'Span'} ${pid}`,
      h('section', { class: 'page-head' },
        crumbs(['Profiles', '/'], p.service_name ? [p.service_name, `/services/${enc(p.service_name)}`] : 'span', 'span profile'),
        h('h1', null, p.span_name || '(unnamed span)', ' ', h('span', { class: 'kind' }, 'span profile')),
        metaList([
          ['Service', serviceLink(p.service_name)],
          ['Span name', p.span_name || '—'],
          [isSpan ? 'Span ID' : 'Profile ID', h('code', { class: 'mono' }, pid)],
          ['Trace ID', idLink('trace', p.trace_id)],
          ['Samples', fmtInt(p.samples)],
          ['CPU time', fmtCpu(p.cpu_ns)],
          ['First seen', whenEl(p.first_seen_ms)],
          ['Last seen', whenEl(p.last_seen_ms)],
          labelChips(p.labels) ? ['Labels', labelChips(p.labels)] : null,
        ]),
        exportLinks(`/api/v1/profiles/${enc(pid)}`, null, isSpan ? `span-${pid}` : `profile-${fileSafe(pid)}`),
        compareForm(`left.profile=${enc(pid)}`)),
      nodes);
    after();
  }

  /**
   * "Compare with…": another span profile, profile or trace ID, opened as the right side of a
   * diff whose left side is `leftQuery`.
   */
  function compareForm(leftQuery) {
    const input = h('input', {
      id: 'compare-input', type: 'text', placeholder: 'span, profile or trace ID', autocomplete: 'off', spellcheck: 'false',
      'aria-label': 'ID of the profile to compare with',
    });
    const form = h('form', { class: 'compare', id: 'compare-form' },
      h('label', { for: 'compare-input' }, 'Compare with… '), input,
      h('button', { class: 'btn', type: 'submit' }, 'Compare'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = input.value.trim();
      if (!v) return;
      const right = HEX32.test(v) ? `right.trace=${enc(v.toLowerCase())}` : `right.profile=${enc(HEX16.test(v) ? v.toLowerCase() : v)}`;
      location.href = `/diff?${leftQuery}&${right}`;
    });
    return form;
  }

  // ---- a diff of two profiles

  function sideMeta(label, side) {
    const s = side || {};
    let what;
    if (s.kind === 'profile') what = idLink('profile', s.profile_id);
    else if (s.kind === 'trace') what = idLink('trace', s.trace_id);
    else what = h('code', { class: 'mono' }, `${s.selector || ''}`);
    return h('section', { class: 'card diff-side' },
      h('h2', null, label),
      metaList([
        ['What', what],
        s.kind === 'service' || s.kind === 'spans' ? ['Time', h('span', null, whenEl(s.from_ms), ' – ', whenEl(s.until_ms))] : null,
        s.span_profiles != null ? ['Span profiles', fmtInt(s.span_profiles)] : null,
        ['Samples', fmtInt(s.samples)],
        ['CPU time', fmtCpu(s.cpu_ns)],
      ]));
  }

  async function renderDiff() {
    mountNavSearch(true);
    setPage('Diff', loadingEl('diff'));
    let body;
    try {
      body = await api(`/api/v1/diff${location.search}`);
    } catch (e) {
      errorPage('this diff', e, () => renderDiff());
      return;
    }
    const g = body.flamegraph || {};
    const fg = new FlameGraph(treeFromDiffLevels(g), DEFAULT_PERIOD_NS, { left: Number(g.left_ticks) || 0, right: Number(g.right_ticks) || 0 });
    fg.showBound(g, null);
    setPage('Diff',
      h('section', { class: 'page-head' },
        crumbs(['Profiles', '/'], 'diff'),
        h('h1', null, 'Diff ', h('span', { class: 'kind' }, 'left → right')),
        h('p', { class: 'muted', id: 'diff-legend' },
          'Width: a function\'s share of the left side plus its share of the right. Red: a larger share of the right side\'s CPU than of the left\'s; green: a smaller one; grey: about the same. Hover for both values.'),
        h('div', { class: 'diff-sides' }, sideMeta('Left', body.left), sideMeta('Right', body.right))),
      fg.el);
    fg.render();
  }

  // ---- one trace

  async function renderTrace(rawId, opts = {}) {
    mountNavSearch(true);
    const loaded = await loadIdPage('trace', rawId, opts, renderTrace);
    if (!loaded) return;
    const { id, body } = loaded;
    const tid = body.trace_id || id;
    const profiles = Array.isArray(body.profiles) ? body.profiles : [];
    const period = body.period_ns || DEFAULT_PERIOD_NS;
    const services = [...new Set(profiles.map((p) => p.service_name).filter(Boolean))].sort();
    const firsts = profiles.map((p) => p.first_seen_ms).filter(Number.isFinite);
    const lasts = profiles.map((p) => p.last_seen_ms).filter(Number.isFinite);
    const spansTable = h('table', { class: 'data spans-table', id: 'trace-spans' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, 'Span'), h('th', { scope: 'col' }, 'Service'), h('th', { scope: 'col' }, 'Span ID'),
        h('th', { scope: 'col', class: 'num' }, 'Samples'), h('th', { scope: 'col', class: 'num' }, 'CPU time'),
        h('th', { scope: 'col', class: 'num' }, 'Share'), h('th', { scope: 'col' }, 'Last seen'))),
      h('tbody', null, profiles.map((p) => h('tr', null,
        h('td', { class: 'span-name' }, h('a', { href: `/profiles/${enc(p.profile_id)}` }, p.span_name || '(unnamed)')),
        h('td', null, serviceLink(p.service_name)),
        h('td', null, idLink('span', p.profile_id)),
        h('td', { class: 'num' }, fmtInt(p.samples)),
        h('td', { class: 'num' }, fmtCpu(p.cpu_ns)),
        h('td', { class: 'num' }, fmtPct(p.samples, body.samples)),
        h('td', null, timeEl(p.last_seen_ms))))));
    const { nodes, after } = profileBody(body.flamegraph, body.top, period, `/api/v1/traces/${enc(tid)}`);
    setPage(`Trace ${tid}`,
      h('section', { class: 'page-head' },
        crumbs(['Profiles', '/'], 'trace'),
        h('h1', null, 'Trace ', h('span', { class: 'mono h1-id' }, tid)),
        metaList([
          ['Trace ID', h('code', { class: 'mono' }, tid)],
          ['Services', services.length ? h('span', { class: 'list-inline' }, services.map(serviceLink)) : '—'],
          ['Span profiles', fmtInt(profiles.length)],
          ['Samples', fmtInt(body.samples)],
          ['CPU time', fmtCpu(body.cpu_ns)],
          ['First seen', whenEl(firsts.length ? Math.min(...firsts) : NaN)],
          ['Last seen', whenEl(lasts.length ? Math.max(...lasts) : NaN)],
        ]),
        exportLinks(`/api/v1/traces/${enc(tid)}`, null, `trace-${tid}`),
        compareForm(`left.trace=${enc(tid)}`)),
      h('section', { class: 'card' },
        h('div', { class: 'card-head' }, h('h2', null, 'Span profiles in this trace'),
          h('span', { class: 'muted' }, 'One per local root span; the flame graph below merges them.')),
        h('div', { class: 'table-wrap' }, spansTable)),
      nodes);
    after();
  }

  // ---- one service

  /** The time range `key` ('15m', '1h', …) ending now: its RANGES row and its bounds in ms. */
  function rangeWindow(key) {
    const spec = RANGES.find((r) => r[0] === key) || RANGES[1];
    const until = Date.now();
    return { spec, from: until - spec[2], until };
  }

  /**
   * What a time-range page shows when its query fails: "nothing in this range" for a 404
   * no_samples (with `emptyTitle` and `emptyHint`), else the error and a retry button.
   */
  function rangeFailure(e, emptyTitle, emptyHint, errorTitle, retry) {
    if (e.status === 404 && e.reason === 'no_samples') {
      return h('section', { class: 'message empty' }, h('h2', null, emptyTitle), h('p', null, emptyHint));
    }
    return h('section', { class: 'message error' },
      h('h2', null, errorTitle), h('p', { class: 'error-box' }, e.message),
      h('p', null, h('button', { class: 'btn primary', type: 'button', onclick: retry }, 'Try again')));
  }

  function renderService(name) {
    mountNavSearch(true);
    const params = new URLSearchParams(location.search);
    let range = RANGES.some((r) => r[0] === params.get('range')) ? params.get('range') : '1h';
    const select = h('select', { id: 'range-select', 'aria-label': 'Time range' },
      RANGES.map(([v, label]) => h('option', { value: v, selected: v === range }, label)));
    let spans = SPAN_SCOPES.some((r) => r[0] === params.get('spans')) ? params.get('spans') : 'all';
    const spansSelect = h('select', { id: 'spans-select', 'aria-label': 'Samples shown' },
      SPAN_SCOPES.map(([v, label]) => h('option', { value: v, selected: v === spans }, label)));
    const scopeText = h('span', { class: 'scope-text' });
    const meta = h('div', { class: 'service-meta' });
    const body = h('div', { class: 'service-body' }, loadingEl('profile'));
    setPage(name,
      h('section', { class: 'page-head' },
        crumbs(['Profiles', '/'], 'service'),
        h('div', { class: 'head-row' },
          h('h1', null, name, ' ', h('span', { class: 'kind' }, 'whole-process profile')),
          h('label', { class: 'range' }, 'Samples ', spansSelect),
          h('label', { class: 'range' }, 'Time range ', select)),
        h('p', { class: 'muted' }, scopeText, ' ',
          h('a', { href: `/?service=${enc(name)}` }, 'Span profiles of this service →')),
        meta),
      body);

    let gen = 0;
    async function load() {
      const my = ++gen;
      const { spec, from, until } = rangeWindow(range);
      const base = `/api/v1/services/${enc(name)}/profile`;
      const qs = `from=${from}&until=${until}` + (spans === 'all' ? '' : `&spans=${spans}`);
      scopeText.textContent = (SPAN_SCOPES.find((r) => r[0] === spans) || SPAN_SCOPES[0])[2];
      body.replaceChildren(loadingEl('profile'));
      let data;
      try {
        data = await api(`${base}?${qs}`);
      } catch (e) {
        if (my !== gen) return;
        meta.replaceChildren();
        body.replaceChildren(rangeFailure(e, `No samples for ${name} in the ${spec[1].toLowerCase()}`,
          'Try a longer time range. The sidecar uploads every 10 s; a service that just started may need a moment.',
          'Could not load this profile', load));
        return;
      }
      if (my !== gen) return;
      const period = data.period_ns || DEFAULT_PERIOD_NS;
      meta.replaceChildren(
        metaList([
          ['Service', data.service_name || name],
          ['Samples', fmtInt(data.samples)],
          ['CPU time', fmtCpu(data.cpu_ns)],
          ['From', whenEl(data.from_ms ?? from)],
          ['Until', whenEl(data.until_ms ?? until)],
        ]),
        exportLinks(base, qs, `${name}-${range}`),
        compareForm(`left.service=${enc(name)}&left.from=${from}&left.until=${until}` + (spans === 'all' ? '' : `&left.spans=${spans}`)));
      const { nodes, after } = profileBody(data.flamegraph, data.top, period, `${base}?${qs}`);
      body.replaceChildren(spanNamesCard(name, from, until, range), ...nodes);
      after();
    }
    select.addEventListener('change', () => {
      range = select.value;
      const q = new URLSearchParams(location.search);
      q.set('range', range);
      history.replaceState(null, '', `${location.pathname}?${q.toString()}`);
      load();
    });
    spansSelect.addEventListener('change', () => {
      spans = spansSelect.value;
      const q = new URLSearchParams(location.search);
      if (spans === 'all') q.delete('spans'); else q.set('spans', spans);
      const rest = q.toString();
      history.replaceState(null, '', rest ? `${location.pathname}?${rest}` : location.pathname);
      load();
    });
    load();
  }

  // ---- every span of one name

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svgEl(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, String(v));
    for (const c of children.flat()) if (c != null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  /**
   * The per-span CPU distribution as a bar chart: one bar per bin, height = spans, dashed lines
   * at p50/p90/p99. Hover says the bin and its count; a click calls `onPick(bin)`.
   */
  function histogramChart(dist, onPick, picked) {
    const bins = Array.isArray(dist && dist.histogram) ? dist.histogram : [];
    const W = 720, H = 180, L = 44, B = 30, T = 10, R = 10;
    const most = Math.max(1, ...bins.map((b) => b.spans));
    const bw = bins.length ? (W - L - R) / bins.length : 0;
    const y = (n) => T + (H - T - B) * (1 - n / most);
    const chart = svgEl('svg', { class: 'histogram', id: 'cpu-histogram', viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': `Spans by CPU time: ${bins.length} bins, at most ${most} spans in one` });
    chart.append(svgEl('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis' }));
    chart.append(svgEl('text', { x: L - 6, y: T + 8, class: 'tick', 'text-anchor': 'end' }, fmtInt(most)));
    chart.append(svgEl('text', { x: L - 6, y: H - B, class: 'tick', 'text-anchor': 'end' }, '0'));
    const labelEvery = Math.max(1, Math.ceil(bins.length / 8));
    bins.forEach((b, i) => {
      const x = L + i * bw;
      const isPicked = picked && picked.from_ns === b.from_ns && picked.to_ns === b.to_ns;
      const bar = svgEl('rect', {
        x: x + 1, y: y(b.spans), width: Math.max(1, bw - 2), height: (H - B) - y(b.spans),
        class: `bar${b.spans ? '' : ' empty'}${isPicked ? ' picked' : ''}`, tabindex: b.spans ? 0 : null,
        'data-from-ns': b.from_ns, 'data-to-ns': b.to_ns, 'data-spans': b.spans,
      });
      // A hit area over the whole column, so a short bar is easy to point at.
      const hit = svgEl('rect', { x, y: T, width: bw, height: H - B - T, class: 'hit' });
      const tip = (e) => showTooltip([
        h('div', { class: 'tt-name' }, `${fmtCpu(b.from_ns)} – ${fmtCpu(b.to_ns)} of CPU`),
        h('div', null, `${fmtInt(b.spans)} span${b.spans === 1 ? '' : 's'}`),
        b.spans ? h('div', { class: 'muted' }, 'Click to show only these spans') : null,
      ], e.clientX, e.clientY);
      for (const el of [bar, hit]) {
        el.addEventListener('mousemove', tip);
        el.addEventListener('mouseleave', hideTooltip);
        if (b.spans) el.addEventListener('click', () => onPick(b));
      }
      bar.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onPick(b); } });
      chart.append(hit, bar);
      if (i % labelEvery === 0) chart.append(svgEl('text', { x, y: H - B + 16, class: 'tick' }, fmtCpu(b.from_ns)));
    });
    // Percentile markers, placed inside the bin that holds them.
    const at = (ns) => {
      const i = bins.findIndex((b) => b.from_ns <= ns && ns < b.to_ns);
      if (i < 0) return null;
      const b = bins[i];
      return L + (i + (ns - b.from_ns) / Math.max(1, b.to_ns - b.from_ns)) * bw;
    };
    // Percentiles at the same place share one line and one label ("p90 p99").
    const marks = new Map();
    for (const [label, ns] of [['p50', dist.p50_ns], ['p90', dist.p90_ns], ['p99', dist.p99_ns]]) {
      const x = at(ns);
      if (x != null) marks.set(x, [...(marks.get(x) || []), label]);
    }
    for (const [x, labels] of marks) {
      chart.append(svgEl('line', { x1: x, x2: x, y1: T, y2: H - B, class: `pct ${labels.map((l) => `pct-${l}`).join(' ')}` }),
        svgEl('text', { x: x + 3, y: T + 10, class: 'pct-label' }, labels.join(' ')));
    }
    return chart;
  }

  function renderSpanName(service, spanName) {
    mountNavSearch(true);
    const params = new URLSearchParams(location.search);
    let range = RANGES.some((r) => r[0] === params.get('range')) ? params.get('range') : '1h';
    // A CPU filter (ms), from a histogram bar or the URL.
    let minMs = params.get('min_cpu_ms');
    let maxMs = params.get('max_cpu_ms');
    const select = h('select', { id: 'range-select', 'aria-label': 'Time range' },
      RANGES.map(([v, label]) => h('option', { value: v, selected: v === range }, label)));
    const filterText = h('p', { class: 'filter-text', id: 'cpu-filter' });
    const meta = h('div', { class: 'service-meta' });
    const dist = h('section', { class: 'card', id: 'distribution' });
    const heavy = h('section', { class: 'card', id: 'heaviest' });
    const body = h('div', { class: 'service-body' }, loadingEl('spans'));
    const display = spanName === '[unnamed]' ? '(unnamed spans)' : spanName;
    setPage(`${display} — ${service}`,
      h('section', { class: 'page-head' },
        crumbs(['Profiles', '/'], [service, `/services/${enc(service)}`], 'span name'),
        h('div', { class: 'head-row' },
          h('h1', null, display, ' ', h('span', { class: 'kind' }, 'every span of this name')),
          h('label', { class: 'range' }, 'Time range ', select)),
        h('p', { class: 'muted' }, `Every span profile of ${service} named ${display} last seen in the range, added up: how much CPU one such span takes, the heaviest, and what they spend it on.`),
        filterText, meta),
      dist, heavy, body);

    const syncUrl = () => {
      const q = new URLSearchParams();
      if (range !== '1h') q.set('range', range);
      if (minMs != null) q.set('min_cpu_ms', minMs);
      if (maxMs != null) q.set('max_cpu_ms', maxMs);
      const rest = q.toString();
      history.replaceState(null, '', rest ? `${location.pathname}?${rest}` : location.pathname);
    };

    let gen = 0;
    async function load() {
      const my = ++gen;
      const { spec, from, until } = rangeWindow(range);
      const scope = `service=${enc(service)}&span_name=${enc(spanName)}&from=${from}&until=${until}`;
      const cpu = (minMs != null ? `&min_cpu_ms=${enc(minMs)}` : '') + (maxMs != null ? `&max_cpu_ms=${enc(maxMs)}` : '');
      const qs = scope + cpu;
      filterText.replaceChildren();
      if (cpu) {
        filterText.append(`Only spans with ${minMs != null ? `at least ${fmtCpu(minMs * 1e6)}` : ''}${minMs != null && maxMs != null ? ' and ' : ''}${maxMs != null ? `at most ${fmtCpu(maxMs * 1e6)}` : ''} of CPU. `,
          h('button', { class: 'btn', type: 'button', id: 'clear-filter', onclick: () => { minMs = null; maxMs = null; syncUrl(); load(); } }, 'Show all spans'));
      }
      body.replaceChildren(loadingEl('spans'));
      let data;
      try {
        data = await api(`/api/v1/aggregate?${qs}`);
      } catch (e) {
        if (my !== gen) return;
        meta.replaceChildren();
        dist.replaceChildren();
        heavy.replaceChildren();
        body.replaceChildren(rangeFailure(e, `No spans named ${display} in the ${spec[1].toLowerCase()}`,
          'Try a longer time range, or another span name from the service page.', 'Could not load these spans', load));
        return;
      }
      if (my !== gen) return;
      const d = data.distribution || {};
      const p90ms = Math.floor((d.p90_ns || 0) / 1e6);
      const aggSide = (side) => `${side}.service=${enc(service)}&${side}.span_name=${enc(spanName)}&${side}.from=${from}&${side}.until=${until}`;
      const compareSlow = data.spans > 1 && d.p90_ns > d.min_ns && !cpu
        ? h('a', { class: 'btn', id: 'compare-slowest', href: `/diff?${aggSide('left')}&left.max_cpu_ms=${Math.max(0, p90ms - 1)}&${aggSide('right')}&right.min_cpu_ms=${p90ms}` },
          `Compare the slowest spans (≥ ${fmtCpu(d.p90_ns)}, p90) with the rest`)
        : null;
      meta.replaceChildren(
        metaList([
          ['Spans', cpu ? `${fmtInt(data.spans)} of ${fmtInt(data.spans_in_range)}` : fmtInt(data.spans)],
          ['CPU time', fmtCpu(data.cpu_ns)],
          ['p50', fmtCpu(d.p50_ns)], ['p90', fmtCpu(d.p90_ns)], ['p99', fmtCpu(d.p99_ns)], ['Max', fmtCpu(d.max_ns)],
          ['From', whenEl(data.from_ms ?? from)], ['Until', whenEl(data.until_ms ?? until)],
        ]),
        exportLinks('/api/v1/aggregate', qs, `${service}-${spanName}-${range}`),
        h('div', { class: 'compare-row' }, compareSlow, compareForm(`${aggSide('left')}${cpu.replaceAll('&', '&left.')}`)));
      const picked = minMs != null && maxMs != null ? { from_ns: minMs * 1e6, to_ns: (Number(maxMs) + 1) * 1e6 } : null;
      dist.replaceChildren(
        h('div', { class: 'card-head' }, h('h2', null, 'CPU per span'),
          h('span', { class: 'muted' }, 'How many spans took how much CPU (at 100 Hz, one sample is 10 ms). Click a bar to show only those spans.')),
        histogramChart(d, (b) => {
          minMs = String(Math.floor(b.from_ns / 1e6));
          maxMs = String(Math.max(0, Math.ceil(b.to_ns / 1e6) - 1));
          syncUrl();
          load();
        }, picked));
      const rows = (Array.isArray(data.heaviest) ? data.heaviest : []).map((p) => h('tr', null,
        h('td', null, idLink('span', p.profile_id)),
        h('td', null, idLink('trace', p.trace_id)),
        h('td', { class: 'num' }, fmtInt(p.samples)),
        h('td', { class: 'num' }, fmtCpu(p.cpu_ns)),
        h('td', null, timeEl(p.last_seen_ms))));
      heavy.replaceChildren(
        h('div', { class: 'card-head' }, h('h2', null, 'Heaviest spans'), h('span', { class: 'muted' }, 'The spans that took the most CPU; each opens its own profile.')),
        h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'heaviest-table' },
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Span ID'), h('th', { scope: 'col' }, 'Trace ID'),
            h('th', { scope: 'col', class: 'num' }, 'Samples'), h('th', { scope: 'col', class: 'num' }, 'CPU time'), h('th', { scope: 'col' }, 'Last seen'))),
          h('tbody', null, rows))));
      const { nodes, after } = profileBody(data.flamegraph, data.top, data.period_ns || DEFAULT_PERIOD_NS, `/api/v1/aggregate?${qs}`);
      body.replaceChildren(...nodes);
      after();
    }
    select.addEventListener('change', () => { range = select.value; syncUrl(); load(); });
    load();
  }

  /** The service's spans per span name in a time range, each linking to its span-name page. */
  function spanNamesCard(service, from, until, rangeKey) {
    const card = h('section', { class: 'card', id: 'span-names' },
      h('div', { class: 'card-head' }, h('h2', null, 'Spans by name'),
        h('span', { class: 'muted' }, 'Span profiles in this time range, grouped by span name; open one for its CPU distribution and heaviest spans.')),
      loadingEl('span names'));
    api(`/api/v1/aggregate?service=${enc(service)}&from=${from}&until=${until}&max_nodes=2`).then((data) => {
      const names = Array.isArray(data.span_names) ? data.span_names : [];
      const range = rangeKey && rangeKey !== '1h' ? `?range=${enc(rangeKey)}` : '';
      card.lastChild.replaceWith(h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'span-names-table' },
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Span name'), h('th', { scope: 'col', class: 'num' }, 'Spans'),
          h('th', { scope: 'col', class: 'num' }, 'CPU time'), h('th', { scope: 'col', class: 'num' }, 'Share'),
          h('th', { scope: 'col', class: 'num' }, 'p50'), h('th', { scope: 'col', class: 'num' }, 'Max'))),
        h('tbody', null, names.map((n) => h('tr', null,
          h('td', { class: 'span-name' }, h('a', { href: `/services/${enc(service)}/spans/${enc(n.span_name)}${range}` },
            n.span_name === '[unnamed]' ? '(unnamed)' : n.span_name)),
          h('td', { class: 'num' }, fmtInt(n.spans)),
          h('td', { class: 'num' }, fmtCpu(n.cpu_ns)),
          h('td', { class: 'num' }, fmtPct(n.cpu_ns, data.cpu_ns)),
          h('td', { class: 'num' }, fmtCpu(n.p50_ns)),
          h('td', { class: 'num' }, fmtCpu(n.max_ns))))))));
    }).catch((e) => {
      card.lastChild.replaceWith(e.status === 404
        ? h('p', { class: 'muted' }, 'No span profiles of this service in this time range.')
        : h('p', { class: 'error-box' }, `Could not load span names. ${e.message}`));
    });
    return card;
  }

  // ---------------------------------------------------------------- router

  function decodeSegment(s) {
    try {
      return decodeURIComponent(s);
    } catch (_) {
      return s;
    }
  }

  function route() {
    const path = location.pathname.replace(/\/+$/, '') || '/';
    let m;
    try {
      if (path === '/' || path === '/index.html') return renderHome();
      if ((m = /^\/profiles\/([^/]+)$/.exec(path))) return renderProfile(decodeSegment(m[1]));
      if ((m = /^\/traces\/([^/]+)$/.exec(path))) return renderTrace(decodeSegment(m[1]));
      if ((m = /^\/services\/([^/]+)$/.exec(path))) return renderService(decodeSegment(m[1]));
      if ((m = /^\/services\/([^/]+)\/spans\/([^/]+)$/.exec(path))) return renderSpanName(decodeSegment(m[1]), decodeSegment(m[2]));
      if (path === '/diff') return renderDiff();
      mountNavSearch(true);
      return messagePage('Page not found', 'unknown',
        h('p', null, 'There is no page at ', h('code', null, location.pathname), '.'),
        h('p', null, h('a', { class: 'btn', href: '/' }, 'Back to search')));
    } catch (e) {
      errorPage('this page', e, () => location.reload());
    }
    return undefined;
  }

  window.addEventListener('error', (e) => {
    if (!app.firstElementChild || app.querySelector('.loading')) {
      errorPage('this page', e.error || e.message);
    }
  });
  window.addEventListener('unhandledrejection', (e) => {
    if (!app.firstElementChild || app.querySelector('.loading')) errorPage('this page', e.reason);
  });

  route();
})();
