// Browser test of spanprof-server's web UI, against a real running server.
//
//   cd tests/ui && npm ci && node ui.test.mjs http://127.0.0.1:4040
//
// The server may be empty: the test seeds its own data through the real ingest
// protocol (Pyroscope's legacy POST /ingest, folded format) with fresh random IDs,
// then drives Debian's chromium (CHROMIUM=/path overrides /usr/bin/chromium) and
// asserts on what a person sees. Prints one line per check and a final
// "N passed, M failed"; exits non-zero on any failure or after a hard timeout.

import { chromium } from 'playwright-core';
import { randomBytes } from 'node:crypto';

const OVERALL_TIMEOUT_MS = Number(process.env.UI_TEST_TIMEOUT_MS || 300_000);
const SCREENSHOT = process.env.UI_TEST_SCREENSHOT || '/tmp/spanprof-ui.png';

const base = (process.argv[2] || process.env.SPANPROF_URL || '').replace(/\/+$/, '');
if (!/^https?:\/\//.test(base)) {
  console.error('usage: node tests/ui/ui.test.mjs <server-base-url>   (e.g. http://127.0.0.1:4040)');
  process.exit(2);
}

// ------------------------------------------------------------------ harness

let passed = 0;
let failed = 0;
let browser = null;
const failures = [];

function summaryLine() {
  return `${passed} passed, ${failed} failed`;
}

// On timeout exit at once: playwright-core kills the browser it launched when the process exits.
const hardTimeout = setTimeout(() => {
  failed += 1;
  console.log(`\nFAIL: overall timeout of ${OVERALL_TIMEOUT_MS / 1000} s exceeded; aborting.`);
  console.log(summaryLine());
  process.exit(1);
}, OVERALL_TIMEOUT_MS);
hardTimeout.unref();

class AssertionError extends Error {}
function assert(cond, message) {
  if (!cond) throw new AssertionError(message);
}

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
    return true;
  } catch (e) {
    failed += 1;
    const msg = e instanceof AssertionError ? e.message : (e && e.stack ? e.stack.split('\n').slice(0, 4).join('\n') : String(e));
    failures.push(`${name}: ${msg}`);
    console.log(`FAIL ${name} (${Date.now() - t0} ms)\n     ${msg.replace(/\n/g, '\n     ')}`);
    return false;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function poll(what, fn, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new AssertionError(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(200);
  }
}

async function http(method, path, body, headers = {}, timeoutMs = 10_000) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const res = await fetch(base + path, { method, body, headers, signal: ctl.signal });
    const text = await res.text();
    return { status: res.status, text, headers: res.headers };
  } catch (e) {
    throw new AssertionError(`${method} ${path} failed: ${e.cause ? e.cause.message : e.message}`);
  } finally {
    clearTimeout(timer);
  }
}

function json(r, what) {
  try {
    return JSON.parse(r.text);
  } catch (_) {
    throw new AssertionError(`${what}: answer is not JSON (status ${r.status}): ${r.text.slice(0, 200)}`);
  }
}

// ------------------------------------------------------------------ test data

const hex = (bytes) => randomBytes(bytes).toString('hex');
const run = hex(3);
const APP = `ride-sharing-ui-${run}`;
const TRACE = hex(16);
const SPAN_A = hex(8); // OrderVehicle
const SPAN_B = hex(8); // CarHandler
const UNSEEN_SPAN = hex(8);
// a profile ID that is no span ID, as profilers may set (pprof.Labels("profile_id", ...)):
// characters a URL must escape, and non-ASCII
const NAMED_ID = `order #42/eu ü?${run}`;
// IDs the server refuses: the all-zero span ID, more than 128 bytes
const BAD_IDS = ['0000000000000000', 'x'.repeat(129)];
const UNSEEN_TRACE = hex(16);

// span A, first post: 40 + 10 = 50 samples; second post (merged): 20 + 5 = 25 → 75
const A1 = 'main;handle_order;find_nearest_vehicle 40\nmain;handle_order;compute_route 10\n';
const A2 = 'main;handle_order;find_nearest_vehicle 20\nmain;handle_order 5\n';
const A_SAMPLES = 75;
const A_NEAREST = 60;
// span B: 36 samples
const B1 = 'main;handle_car;check_driver_availability 30\nmain;handle_car;load_driver_profile 6\n';
const B_SAMPLES = 36;
// whole-process profile of the app (no span labels)
const P1 = 'main;event_loop;poll_sockets 50\nmain;gc;sweep_heap 12\n';

// a function name full of HTML: must show up as text, never as markup
// (no ';' and no space: those separate frames and the count in the folded format)
const EVIL_FN = '<b>evil</b>"&amp\'<img_src=x_onerror=alert(1)>';
const SPAN_EVIL = hex(8);
// more span profiles than one page of the recent table (50) for "Load more"
const PAGING_APP = `paging-ui-${run}`;
const PAGING_SPANS = 53;
// a service of its own for span-name aggregates
const AGG_APP = `agg-ui-${run}`;

async function ingest(labels, body, app = APP, timeoutMs = 10_000) {
  const until = Math.floor(Date.now() / 1000);
  const from = until - 10;
  const name = labels ? `${app}.cpu{${labels}}` : `${app}.cpu`;
  const path = `/ingest?name=${encodeURIComponent(name)}&from=${from}&until=${until}&format=folded&sampleRate=100`;
  const r = await http('POST', path, body, { 'Content-Type': 'text/plain' }, timeoutMs);
  assert(r.status >= 200 && r.status < 300, `POST ${path} answered ${r.status}: ${r.text.slice(0, 300)}`);
}

// a large span profile, as a big service has: BIG_STACKS distinct stacks of 10–40 frames over
// 2,000 functions, posted in four parts that the server merges into one profile
const SPAN_BIG = hex(8);
const BIG_STACKS = 20_000;
function bigProfileParts(parts) {
  let x = 0x2545f491;
  const next = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  const out = Array.from({ length: parts }, () => []);
  for (let i = 0; i < BIG_STACKS; i++) {
    const depth = 10 + (next() % 31);
    const frames = [];
    for (let d = 0; d < depth; d++) frames.push(`fn_${d}_${d < 3 ? next() % 4 : next() % 2000}`);
    frames.push(`leaf_${i}`);
    out[i % parts].push(`${frames.join(';')} ${1 + (next() % 20)}`);
  }
  return out.map((lines) => lines.join('\n') + '\n');
}

// ------------------------------------------------------------------ browser helpers

const pageErrors = [];

async function newPage(ctx) {
  const page = await ctx.newPage();
  page.setDefaultTimeout(10_000);
  page.setDefaultNavigationTimeout(15_000);
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  return page;
}

async function goto(page, path) {
  const r = await page.goto(base + path, { waitUntil: 'domcontentloaded' });
  assert(r && r.status() === 200, `GET ${path} answered ${r ? r.status() : 'nothing'} (the server must serve index.html for it)`);
}

const frame = (page, name) => page.locator(`#flamegraph .frame[data-name="${name}"]`).first();

async function metaValue(page, label) {
  const dd = page.locator('dl.meta .meta-item', { has: page.locator('dt', { hasText: new RegExp(`^${label}$`) }) }).locator('dd');
  await dd.first().waitFor();
  return (await dd.first().innerText()).trim();
}

async function widthOf(locator) {
  const b = await locator.boundingBox();
  assert(b, 'element has no bounding box (not visible)');
  return b.width;
}

// ------------------------------------------------------------------ the test

async function main() {
  console.log(`spanprof UI test against ${base} (app ${APP}, trace ${TRACE}, spans ${SPAN_A} ${SPAN_B})`);

  const up = await check('server is up (GET /healthz)', async () => {
    await poll(`${base}/healthz to answer 200`, async () => (await http('GET', '/healthz')).status === 200, 15_000);
  });
  if (!up) {
    console.log(summaryLine());
    process.exit(1);
  }

  const seeded = await check('seed: ingest two spans of one trace, a merge post and a whole-process profile', async () => {
    await ingest(`span_id=${SPAN_A},trace_id=${TRACE},span_name=OrderVehicle`, A1);
    await ingest(`span_id=${SPAN_B},trace_id=${TRACE},span_name=CarHandler`, B1);
    await ingest('', P1);
    await ingest(`span_id=${SPAN_A},trace_id=${TRACE},span_name=OrderVehicle`, A2);
    // The API must reflect the merge (both posts add up).
    await poll(`GET /api/v1/profiles/${SPAN_A} to report ${A_SAMPLES} samples`, async () => {
      const r = await http('GET', `/api/v1/profiles/${SPAN_A}`);
      if (r.status !== 200) throw new Error(`status ${r.status}: ${r.text.slice(0, 200)}`);
      const b = json(r, 'profile');
      if (b.profile.samples !== A_SAMPLES) throw new Error(`samples = ${b.profile.samples}`);
      return true;
    });
  });
  if (!seeded) {
    console.log('seeding failed; the UI checks cannot run');
    console.log(summaryLine());
    process.exit(1);
  }

  await check('API: 404 no_samples for an unseen span/trace, 400 invalid_id for a malformed ID', async () => {
    for (const [path, status, reason] of [
      [`/api/v1/profiles/${UNSEEN_SPAN}`, 404, 'no_samples'],
      [`/api/v1/traces/${UNSEEN_TRACE}`, 404, 'no_samples'],
      ...BAD_IDS.map((id) => [`/api/v1/profiles/${id}`, 400, 'invalid_id']),
      ['/api/v1/traces/xyz', 400, 'invalid_id'],
    ]) {
      const r = await http('GET', path);
      assert(r.status === status, `GET ${path}: expected ${status}, got ${r.status}: ${r.text.slice(0, 200)}`);
      const b = json(r, path);
      assert(b.reason === reason, `GET ${path}: expected reason "${reason}", got ${JSON.stringify(b)}`);
      assert(typeof b.error === 'string' && b.error, `GET ${path}: expected an "error" message, got ${JSON.stringify(b)}`);
    }
  });

  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  browser = await chromium.launch({
    executablePath,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const ctx = await browser.newContext({ viewport: { width: 1360, height: 900 }, locale: 'en-US' });
  // The UI must work with no external resources: fail any request that leaves the server.
  const external = [];
  await ctx.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(base + '/') || url === base || url.startsWith('data:')) return route.continue();
    external.push(url);
    return route.abort();
  });
  const page = await newPage(ctx);

  await check('home: recent span profiles table lists both seeded spans, services list links the app', async () => {
    await goto(page, '/');
    await page.locator(`#recent-table a[href="/profiles/${SPAN_A}"]`).waitFor();
    await page.locator(`#recent-table a[href="/profiles/${SPAN_B}"]`).waitFor();
    const rowA = page.locator('#recent-table tbody tr', { has: page.locator(`a[href="/profiles/${SPAN_A}"]`) });
    const rowText = await rowA.innerText();
    assert(rowText.includes(APP), `row of span A does not show the service ${APP}: ${rowText}`);
    assert(rowText.includes('OrderVehicle'), `row of span A does not show the span name: ${rowText}`);
    assert(rowText.includes(String(A_SAMPLES)), `row of span A does not show ${A_SAMPLES} samples: ${rowText}`);
    assert(rowText.includes('750 ms'), `row of span A does not show CPU time "750 ms": ${rowText}`);
    assert(/(\d+ s ago|just now)/.test(rowText), `row of span A does not show a relative time: ${rowText}`);
    assert(await rowA.locator(`a[href="/traces/${TRACE}"]`).count() === 1, 'row of span A has no link to its trace');
    await page.locator(`#services-list a[href="/services/${encodeURIComponent(APP)}"]`).waitFor();
  });

  await check('home: the service filter narrows the table to the seeded app', async () => {
    await goto(page, '/');
    await page.locator('#recent-table tbody tr').first().waitFor();
    await page.fill('#filter-service', APP);
    await page.press('#filter-service', 'Enter');
    await poll('the table to show only the 2 spans of the app', async () => {
      const rows = await page.locator('#recent-table tbody tr').allInnerTexts();
      return rows.length === 2 && rows.every((t) => t.includes(APP));
    });
  });

  await check('home: an invalid search shows an inline error and does not navigate', async () => {
    await goto(page, '/');
    await page.fill('#search-input', BAD_IDS[1]);
    await page.press('#search-input', 'Enter');
    await page.locator('#search-error').waitFor({ state: 'visible' });
    const t = await page.locator('#search-error').innerText();
    assert(/16 hex/.test(t) && /32 hex/.test(t) && /128 bytes/.test(t), `error message does not explain the ID formats: "${t}"`);
    assert(new URL(page.url()).pathname === '/', `navigated to ${page.url()}`);
  });

  await check('search by span ID lands on its profile page: flame graph and merged sample count', async () => {
    await goto(page, '/');
    await page.fill('#search-input', SPAN_A);
    await page.press('#search-input', 'Enter');
    await page.waitForURL(`**/profiles/${SPAN_A}`);
    await frame(page, 'find_nearest_vehicle').waitFor();
    assert(await page.locator('h1').innerText().then((t) => t.includes('OrderVehicle')), 'heading does not show the span name');
    const samples = await metaValue(page, 'Samples');
    assert(samples === String(A_SAMPLES), `header shows Samples "${samples}", expected the merged ${A_SAMPLES}`);
    const cpu = await metaValue(page, 'CPU time');
    assert(cpu === '750 ms', `header shows CPU time "${cpu}", expected "750 ms"`);
    assert((await metaValue(page, 'Service')) === APP, 'header does not show the service');
    assert((await metaValue(page, 'Span ID')) === SPAN_A, 'header does not show the span ID');
    const traceLink = page.locator(`dl.meta a[href="/traces/${TRACE}"]`);
    assert(await traceLink.count() === 1, 'header has no link to the trace');
    const text = (await frame(page, 'find_nearest_vehicle').innerText()).trim();
    assert(text === 'find_nearest_vehicle', `frame text is "${text}"`);
  });

  await check('flame graph: clicking a frame zooms it to full width; Reset zoom restores', async () => {
    const graphW = await widthOf(page.locator('#flamegraph'));
    const f = frame(page, 'compute_route');
    const before = await widthOf(f);
    assert(before < graphW * 0.5, `compute_route is ${before}px of ${graphW}px before zooming`);
    await f.click();
    await poll('compute_route to become full width', async () => Math.abs((await widthOf(frame(page, 'compute_route'))) - graphW) < 3);
    // ancestors remain as full-width bars above
    const parentW = await widthOf(frame(page, 'handle_order'));
    assert(Math.abs(parentW - graphW) < 3, `ancestor handle_order is ${parentW}px, expected full width ${graphW}px`);
    assert(await frame(page, 'find_nearest_vehicle').count() === 0, 'a sibling frame is still drawn after zooming');
    await page.click('#fg-reset');
    await poll('compute_route to be narrow again', async () => Math.abs((await widthOf(frame(page, 'compute_route'))) - before) < 3);
    await frame(page, 'find_nearest_vehicle').waitFor();
  });

  await check('flame graph: searching "nearest" highlights frames and shows the matched share', async () => {
    await page.fill('#fg-search', 'nearest');
    await page.press('#fg-search', 'Enter');
    await page.locator('#flamegraph .frame.highlighted[data-name="find_nearest_vehicle"]').first().waitFor();
    const n = await page.locator('#flamegraph .frame.highlighted').count();
    assert(n >= 1, 'no highlighted frame');
    assert(await page.locator('#flamegraph .frame.highlighted[data-name="compute_route"]').count() === 0, 'a non-matching frame is highlighted');
    const m = (await page.locator('#fg-match').innerText()).trim();
    const expected = `${((100 * A_NEAREST) / A_SAMPLES).toFixed(1)}%`;
    assert(m.includes('matched') && m.includes(expected), `match info is "${m}", expected "matched: ${expected} of total"`);
    await page.fill('#fg-search', '');
    await page.press('#fg-search', 'Enter');
    await poll('highlights to clear', async () => (await page.locator('#flamegraph .frame.highlighted').count()) === 0);
  });

  await check('flame graph: hovering a frame shows a tooltip with name, samples and share', async () => {
    await frame(page, 'find_nearest_vehicle').hover();
    const tip = page.locator('#tooltip');
    await tip.waitFor({ state: 'visible' });
    const t = await tip.innerText();
    assert(t.includes('find_nearest_vehicle'), `tooltip: ${t}`);
    assert(t.includes(`${A_NEAREST} samples`), `tooltip does not show ${A_NEAREST} samples: ${t}`);
    assert(t.includes('600 ms'), `tooltip does not show the CPU time 600 ms: ${t}`);
    assert(t.includes('80.0%'), `tooltip does not show 80.0% of total: ${t}`);
    await page.mouse.move(2, 2);
    await tip.waitFor({ state: 'hidden' });
  });

  await check('top functions table lists find_nearest_vehicle first and sorts by clicking headers', async () => {
    const table = page.locator('#top-table');
    await table.waitFor();
    const firstRow = table.locator('tbody tr').first();
    const t = await firstRow.innerText();
    assert(t.includes('find_nearest_vehicle'), `first row of top functions is "${t}"`);
    assert(t.includes('80.0%'), `first row does not show 80.0% of the profile: "${t}"`);
    await table.locator('th', { hasText: 'Function' }).click();
    await poll('sorting by function name', async () => {
      const names = (await table.locator('tbody td.fn').allInnerTexts()).map((s) => s.trim());
      const sorted = [...names].sort((a, b) => b.localeCompare(a));
      const asc = [...names].sort((a, b) => a.localeCompare(b));
      return names.length > 1 && (names.join() === sorted.join() || names.join() === asc.join()) && names[0] !== 'find_nearest_vehicle';
    });
  });

  await check('export links of the span profile, and the folded export has the stacks', async () => {
    for (const f of ['pprof', 'folded', 'speedscope', 'svg', 'json']) {
      const href = `/api/v1/profiles/${SPAN_A}?format=${f}`;
      assert(await page.locator(`a.export[href="${href}"]`).count() === 1, `no export link with href ${href}`);
    }
    const r = await http('GET', `/api/v1/profiles/${SPAN_A}?format=folded`);
    assert(r.status === 200, `folded export answered ${r.status}`);
    const line = r.text.split('\n').find((l) => l.includes('find_nearest_vehicle'));
    assert(line, `folded export has no line with find_nearest_vehicle:\n${r.text.slice(0, 500)}`);
    assert(/^main;handle_order;find_nearest_vehicle 60$/.test(line.trim()), `folded line is "${line}", expected "main;handle_order;find_nearest_vehicle 60"`);
  });

  await check('screenshot of the profile page', async () => {
    await goto(page, `/profiles/${SPAN_A}`);
    await frame(page, 'handle_order').hover();
    await page.locator('#tooltip').waitFor({ state: 'visible' });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`     saved ${SCREENSHOT}`);
  });

  await check('search by trace ID lands on the trace page with frames of both spans', async () => {
    await goto(page, '/');
    await page.fill('#search-input', TRACE);
    await page.press('#search-input', 'Enter');
    await page.waitForURL(`**/traces/${TRACE}`);
    await frame(page, 'find_nearest_vehicle').waitFor();
    await frame(page, 'check_driver_availability').waitFor();
    await page.locator(`#trace-spans a[href="/profiles/${SPAN_A}"]`).first().waitFor();
    await page.locator(`#trace-spans a[href="/profiles/${SPAN_B}"]`).first().waitFor();
    const samples = await metaValue(page, 'Samples');
    assert(samples === String(A_SAMPLES + B_SAMPLES), `trace header shows Samples "${samples}", expected ${A_SAMPLES + B_SAMPLES}`);
    for (const f of ['pprof', 'folded', 'speedscope', 'svg', 'json']) {
      const href = `/api/v1/traces/${TRACE}?format=${f}`;
      assert(await page.locator(`a.export[href="${href}"]`).count() === 1, `no export link with href ${href}`);
    }
  });

  await check('a never-seen span ID shows "No samples for this span yet"', async () => {
    await goto(page, `/profiles/${UNSEEN_SPAN}`);
    const h1 = page.locator('h1', { hasText: 'No samples for this span yet' });
    await h1.waitFor();
    const body = await page.locator('main').innerText();
    assert(/10 ms/.test(body) && /10 s/.test(body), `the page does not explain the sampling period and upload interval: ${body}`);
  });

  await check('a never-seen trace ID shows "No samples for this trace yet"', async () => {
    await goto(page, `/traces/${UNSEEN_TRACE}`);
    await page.locator('h1', { hasText: 'No samples for this trace yet' }).waitFor();
  });

  await check('a malformed ID shows "Unknown ID"', async () => {
    for (const id of BAD_IDS) {
      await goto(page, `/profiles/${id}`);
      await page.locator('h1', { hasText: 'Unknown ID' }).waitFor();
      const body = await page.locator('main').innerText();
      assert(/16 hexadecimal digits/.test(body) && /32/.test(body) && /128 bytes/.test(body), `the page does not explain the ID formats: ${body}`);
    }
    await goto(page, '/traces/xyz');
    await page.locator('h1', { hasText: 'Unknown ID' }).waitFor();
  });

  await check('compare with…: a diff page of two span profiles in red and green, both values in the tooltip', async () => {
    await goto(page, `/profiles/${SPAN_A}`);
    await page.fill('#compare-input', SPAN_B.toUpperCase());
    await page.press('#compare-input', 'Enter');
    await page.waitForURL(`**/diff?left.profile=${SPAN_A}&right.profile=${SPAN_B}`);
    // find_nearest_vehicle is only in A (left): a smaller share on the right, green; B's
    // check_driver_availability only on the right: red; main is all of both: grey.
    await frame(page, 'find_nearest_vehicle').waitFor();
    await frame(page, 'check_driver_availability').waitFor();
    assert(await frame(page, 'find_nearest_vehicle').evaluate((e) => e.classList.contains('diff-less')), 'left only is green (diff-less)');
    assert(await frame(page, 'check_driver_availability').evaluate((e) => e.classList.contains('diff-more')), 'right only is red (diff-more)');
    const main = await frame(page, 'main').evaluate((e) => e.className);
    assert(!/diff-(more|less)/.test(main), `main holds all of both sides: ${main}`);
    const [green, red] = await Promise.all([
      frame(page, 'find_nearest_vehicle').evaluate((e) => getComputedStyle(e).backgroundColor),
      frame(page, 'check_driver_availability').evaluate((e) => getComputedStyle(e).backgroundColor),
    ]);
    const rgb = (c) => (c.match(/\d+/g) || []).map(Number);
    assert(rgb(green)[1] > rgb(green)[0] && rgb(red)[0] > rgb(red)[1], `green ${green}, red ${red}`);
    await frame(page, 'find_nearest_vehicle').hover();
    await page.locator('#tooltip').waitFor({ state: 'visible' });
    const tip = await page.locator('#tooltip').innerText();
    assert(/Left/.test(tip) && /60 samples/.test(tip) && /Right/.test(tip) && /0 samples/.test(tip) && /points/.test(tip), `tooltip: ${tip}`);
    const sides = await page.locator('.diff-side').allInnerTexts();
    assert(sides.length === 2 && sides[0].includes(String(A_SAMPLES)) && sides[1].includes(String(B_SAMPLES)), `side totals: ${sides}`);
    await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-diff.png'), fullPage: true });
    // A malformed side: the page says what is wrong.
    await goto(page, `/diff?left.profile=${SPAN_A}`);
    await page.locator('.error-box').waitFor();
    assert(/right/.test(await page.locator('.error-box').innerText()), 'the error names the missing side');
  });

  await check('services page of the app shows the whole-process flame graph and a time range select', async () => {
    await goto(page, `/services/${encodeURIComponent(APP)}`);
    await frame(page, 'poll_sockets').waitFor();
    await frame(page, 'sweep_heap').waitFor();
    const opts = await page.locator('#range-select option').evaluateAll((os) => os.map((o) => o.value));
    assert(opts.join() === '15m,1h,6h,24h', `time range options are ${opts}`);
    await page.selectOption('#range-select', '15m');
    await frame(page, 'poll_sockets').waitFor();
    const exp = page.locator(`a.export[href^="/api/v1/services/${encodeURIComponent(APP)}/profile?"][href$="format=folded"]`);
    assert(await exp.count() === 1, 'no folded export link on the services page');
    const r = await http('GET', await exp.getAttribute('href'));
    assert(r.status === 200 && r.text.includes('poll_sockets'), `services folded export answered ${r.status}: ${r.text.slice(0, 200)}`);
    // All of the service's CPU by default, span samples too; then only outside, only inside.
    await frame(page, 'find_nearest_vehicle').waitFor();
    assert(/inside spans or not/.test(await page.locator('.scope-text').innerText()), 'the page says what it shows');
    await page.selectOption('#spans-select', 'outside');
    await page.waitForURL(/spans=outside/);
    await frame(page, 'find_nearest_vehicle').waitFor({ state: 'detached' });
    await frame(page, 'poll_sockets').waitFor();
    assert(/outside any span/.test(await page.locator('.scope-text').innerText()), 'the outside-spans text');
    const outside = await http('GET', await exp.getAttribute('href'));
    assert(outside.text.includes('poll_sockets') && !outside.text.includes('find_nearest_vehicle'), `the export follows the choice: ${outside.text.slice(0, 300)}`);
    await page.selectOption('#spans-select', 'inside');
    await frame(page, 'find_nearest_vehicle').waitFor();
    await frame(page, 'poll_sockets').waitFor({ state: 'detached' });
    assert(/inside spans/.test(await page.locator('.scope-text').innerText()), 'the inside-spans text');
    await page.selectOption('#spans-select', 'all');
  });

  await check('spans by name: the service lists its span names with counts; a span name\'s page shows the CPU histogram, the heaviest spans, a CPU filter and "compare the slowest"', async () => {
    // Seven OrderVehicle spans of 1–9 samples and two Pay spans, in a service of their own.
    const counts = [1, 2, 2, 3, 5, 9, 2];
    const orders = counts.map(() => hex(8));
    for (let i = 0; i < counts.length; i++) {
      await ingest(`span_id=${orders[i]},span_name=OrderVehicle`, `main;order;price_ride ${counts[i]}\n`, AGG_APP);
    }
    for (const n of [4, 6]) await ingest(`span_id=${hex(8)},span_name=Pay`, `main;pay;charge_card ${n}\n`, AGG_APP);
    await goto(page, `/services/${encodeURIComponent(AGG_APP)}`);
    const row = page.locator('#span-names-table tbody tr', { hasText: 'OrderVehicle' });
    await row.waitFor();
    const cells = await row.locator('td').allInnerTexts();
    assert(cells[1] === '7' && cells[2] === '240 ms', `OrderVehicle row: ${cells}`);
    const pay = await page.locator('#span-names-table tbody tr', { hasText: 'Pay' }).locator('td').allInnerTexts();
    assert(pay[1] === '2' && pay[2] === '100 ms', `Pay row: ${pay}`);
    await row.locator('a').click();
    await page.waitForURL(`**/services/${encodeURIComponent(AGG_APP)}/spans/OrderVehicle`);
    await page.locator('#cpu-histogram').waitFor();
    await frame(page, 'price_ride').waitFor();
    assert(await metaValue(page, 'Spans') === '7', `spans: ${await metaValue(page, 'Spans')}`);
    assert(await metaValue(page, 'p50') === '20 ms' && await metaValue(page, 'Max') === '90 ms', 'p50 and max');
    // One bar per sample count from 1 to 9: 1, 3, 1, 0, 1, 0, 0, 0, 1 spans.
    const bars = await page.locator('#cpu-histogram rect.bar').evaluateAll((rs) => rs.map((r) => Number(r.dataset.spans)));
    assert(bars.join() === '1,3,1,0,1,0,0,0,1', `bars: ${bars}`);
    const heights = await page.locator('#cpu-histogram rect.bar').evaluateAll((rs) => rs.map((r) => r.getBoundingClientRect().height));
    assert(heights[1] > heights[0] * 2.5 && heights[0] > 0, `bar heights follow the counts: ${heights}`);
    const heavy = await page.locator('#heaviest-table tbody tr').allInnerTexts();
    assert(heavy.length === 7 && heavy[0].includes(orders[5]) && heavy[0].includes('90 ms'), `heaviest first: ${heavy[0]}`);
    await page.locator('#cpu-histogram rect.bar[data-spans="3"]').hover();
    await page.locator('#tooltip').waitFor({ state: 'visible' });
    const tip = await page.locator('#tooltip').innerText();
    assert(/20 ms – 30 ms/.test(tip) && /3 spans/.test(tip), `histogram tooltip: ${tip}`);
    await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-span-name.png'), fullPage: true });
    // A click on the bar narrows the page to those spans.
    await page.locator('#cpu-histogram rect.bar[data-spans="3"]').click();
    await page.waitForURL(/min_cpu_ms=20&max_cpu_ms=29/);
    await poll('the filtered aggregate', async () => (await metaValue(page, 'Spans')) === '3 of 7');
    assert(/at least 20 ms and at most 29 ms/.test(await page.locator('#cpu-filter').innerText()), 'the filter is said');
    await page.locator('#clear-filter').click();
    await poll('the whole aggregate again', async () => (await metaValue(page, 'Spans')) === '7');
    // The slowest 10 % (p90 = 90 ms here) against the rest.
    await page.locator('#compare-slowest').click();
    await page.waitForURL(/\/diff\?/);
    await page.locator('.diff-side').first().waitFor();
    const sides = await page.locator('.diff-side').allInnerTexts();
    assert(/Span profiles\s*6\b/i.test(sides[0]) && /Span profiles\s*1\b/i.test(sides[1]), `sides: ${sides}`);
  });

  await check('a profile ID that is no span ID: merged on insert, found by the search box, listed and linked', async () => {
    await ingest(`profile_id=${NAMED_ID},span_name=Checkout`, 'main;checkout;charge_card 7\n');
    await ingest(`profile_id=${NAMED_ID},span_name=Checkout`, 'main;checkout;reserve_stock 5\n');
    await goto(page, '/');
    await page.fill('#search-input', NAMED_ID);
    await page.press('#search-input', 'Enter');
    await page.waitForURL(`**/profiles/${encodeURIComponent(NAMED_ID)}`);
    await frame(page, 'charge_card').waitFor();
    await frame(page, 'reserve_stock').waitFor();
    assert((await metaValue(page, 'Profile ID')) === NAMED_ID, 'header does not show the profile ID');
    assert((await metaValue(page, 'Samples')) === '12', 'the two posts were not merged into 12 samples');
    const exp = page.locator('a.export[data-format="folded"]');
    const r = await http('GET', await exp.getAttribute('href'));
    assert(r.status === 200 && r.text.includes('main;checkout;charge_card 7'), `folded export answered ${r.status}: ${r.text.slice(0, 200)}`);
    await goto(page, '/');
    await page.locator(`#recent-table a[href="/profiles/${encodeURIComponent(NAMED_ID)}"]`).waitFor();
  });

  await check('function names are shown as text, never as HTML', async () => {
    await ingest(`span_id=${SPAN_EVIL},span_name=Escaping`, `main;${EVIL_FN} 7\n`);
    await goto(page, `/profiles/${SPAN_EVIL}`);
    await page.locator('#flamegraph .frame').first().waitFor();
    const r = await page.evaluate((evil) => {
      const f = [...document.querySelectorAll('#flamegraph .frame')].find((e) => e.getAttribute('data-name') === evil);
      return {
        found: !!f,
        text: f ? f.textContent : null,
        markup: document.querySelectorAll('main b, main img, #tooltip b').length,
        topText: document.querySelector('#top-table tbody').textContent,
      };
    }, EVIL_FN);
    assert(r.found, `no frame with data-name ${EVIL_FN}`);
    assert(r.text === EVIL_FN, `frame text is ${JSON.stringify(r.text)}`);
    assert(r.markup === 0, 'a function name was rendered as HTML');
    assert(r.topText.includes(EVIL_FN), 'top functions table does not show the name as text');
    await frame(page, 'main').hover();
    await page.locator('#tooltip').waitFor({ state: 'visible' });
  });

  await check(`home: "Load more" pages through ${PAGING_SPANS} span profiles with the cursor`, async () => {
    const ids = Array.from({ length: PAGING_SPANS }, () => hex(8));
    for (let i = 0; i < ids.length; i += 8) {
      await Promise.all(ids.slice(i, i + 8).map((id) => ingest(`span_id=${id},span_name=Page`, 'main;work 1\n', PAGING_APP)));
    }
    await goto(page, `/?service=${encodeURIComponent(PAGING_APP)}`);
    const rows = page.locator('#recent-table tbody tr');
    await poll('the first page of 50 rows', async () => (await rows.count()) === 50);
    await page.locator('#load-more').waitFor({ state: 'visible' });
    await page.click('#load-more');
    await poll(`all ${PAGING_SPANS} rows`, async () => (await rows.count()) === PAGING_SPANS);
    await page.locator('#load-more').waitFor({ state: 'hidden' });
    const shown = new Set(await page.locator('#recent-table tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.profileId)));
    assert(ids.every((id) => shown.has(id)), 'some seeded span profiles are missing or repeated after "Load more"');
  });

  await check(`a ${BIG_STACKS.toLocaleString('en-US')}-stack profile: bounded graph drawn, search and zoom work, "Show all" loads every node`, async () => {
    for (const part of bigProfileParts(4)) await ingest(`span_id=${SPAN_BIG},span_name=Big`, part, APP, 60_000);
    const t0 = Date.now();
    await goto(page, `/profiles/${SPAN_BIG}`);
    await page.locator('#flamegraph .frame').first().waitFor({ timeout: 60_000 });
    const loadMs = Date.now() - t0;
    const timing = await page.evaluate(() => {
      const api = performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/v1/profiles/')).pop();
      const g = document.querySelector('#flamegraph');
      return {
        responseEnd: api ? api.responseEnd : NaN,
        bytes: api ? api.encodedBodySize || api.transferSize : NaN,
        drawnAt: Number(g.dataset.renderedAt),
        renderMs: Number(g.dataset.renderMs),
        frames: g.querySelectorAll('.frame').length,
      };
    });
    const bound = (await page.locator('#fg-bound').innerText()).trim();
    assert(/merged into "other" frames/.test(bound), `no note that nodes were merged: "${bound}"`);
    assert(await page.locator('#flamegraph .frame.merged').count() > 0, 'no merged "other" frame is drawn');
    // Search: a function on many stacks; the keydown handler searches synchronously.
    const searchMs = await page.evaluate(() => {
      const i = document.querySelector('#fg-search');
      i.value = 'fn_2_3';
      const t = performance.now();
      i.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter' }));
      return performance.now() - t;
    });
    assert(await page.locator('#flamegraph .frame.highlighted').count() > 0, 'search highlighted nothing');
    const m = (await page.locator('#fg-match').innerText()).trim();
    assert(/^matched: [\d.]+% of total$/.test(m), `match info is "${m}"`);
    // Zoom: click the widest frame under the root.
    const zoomMs = await page.evaluate(() => {
      const frames = [...document.querySelectorAll('#flamegraph .frame:not(.root)')];
      const f = frames.find((e) => e.style.top === '18px');
      const t = performance.now();
      f.click();
      return performance.now() - t;
    });
    await poll('Reset zoom to be enabled', async () => !(await page.locator('#fg-reset').isDisabled()));
    await page.click('#fg-reset');
    // Every node, on request.
    const t1 = Date.now();
    await page.click('#fg-show-all');
    await poll('every node to load', async () => /^Showing all/.test((await page.locator('#fg-bound').innerText()).trim()), 120_000);
    const allMs = Date.now() - t1;
    assert(await page.locator('#flamegraph .frame').count() > 0, 'nothing drawn after "Show all"');
    console.log(`     large profile: ${(timing.bytes / 1e6).toFixed(2)} MB JSON, page ${loadMs} ms, drawn ${Math.round(timing.drawnAt - timing.responseEnd)} ms after the response `
      + `(render ${timing.renderMs} ms, ${timing.frames} frames); search ${searchMs.toFixed(1)} ms; zoom ${zoomMs.toFixed(1)} ms; show all ${allMs} ms`);
  });

  await check('no JavaScript errors and no external requests', async () => {
    assert(pageErrors.length === 0, `page errors:\n${pageErrors.join('\n')}`);
    assert(external.length === 0, `requests outside the server:\n${external.join('\n')}`);
  });

  await browser.close();
  browser = null;
}

try {
  await main();
} catch (e) {
  failed += 1;
  console.log(`FAIL (aborted) ${e && e.stack ? e.stack : e}`);
  if (browser) await browser.close().catch(() => {});
}
if (failures.length) {
  console.log('\nFailures:');
  for (const f of failures) console.log(`  - ${f}`);
}
console.log(summaryLine());
clearTimeout(hardTimeout);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
