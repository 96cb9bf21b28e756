// Captures real Node.js profiles with @datadog/pprof, the profiler Grafana's Pyroscope Node.js
// client wraps, labelled the way that client labels them (a context of `{ labels }` per span,
// turned into sample labels when the profile is taken). Writes into the directory argv[2]:
//   cpu.pb.gz   wall-time profile with CPU time (collectCpuTime), spans labelled span_id /
//               profile_id, plus unlabelled work
//   wall.pb.gz  wall-time profile without CPU time
//   heap.pb.gz  heap profile (V8's sampling heap profiler)
// Run by server/tests/node_profiler.rs; `scripts/test` installs the package (npm ci).
'use strict';

const fs = require('fs');
const path = require('path');
const pprof = require('@datadog/pprof');

const out = process.argv[2];
let sink = 0;

function burn(ms) {
  const end = Date.now() + ms;
  let x = 0;
  while (Date.now() < end) for (let i = 0; i < 10000; i++) x += i * i;
  sink += x;
}
function checkoutWork() { burn(700); }
function batchWork() { burn(400); }
function backgroundWork() { burn(300); }
const kept = [];
function allocate() { for (let i = 0; i < 20000; i++) kept.push({ i, s: 'x'.repeat(64 + (i % 64)) }); }

function withLabels(labels, fn) {
  pprof.time.setContext({ labels });
  try { fn(); } finally { pprof.time.setContext({}); }
}
const generateLabels = ({ context }) => ({ ...((context && context.context && context.context.labels) || {}) });

async function main() {
  const interval = { intervalMicros: 10_000, durationMillis: 60_000, withContexts: true };

  pprof.time.start({ ...interval, collectCpuTime: true });
  pprof.time.setContext({});
  withLabels({ span_id: '00f067aa0ba902b7', span_name: 'Checkout' }, checkoutWork);
  withLabels({ profile_id: 'checkout-42', span_name: 'Batch' }, batchWork);
  backgroundWork();
  const cpu = pprof.time.stop(false, generateLabels);
  fs.writeFileSync(path.join(out, 'cpu.pb.gz'), await pprof.encode(cpu));

  pprof.time.start({ ...interval, collectCpuTime: false });
  backgroundWork();
  const wall = pprof.time.stop(false, generateLabels);
  fs.writeFileSync(path.join(out, 'wall.pb.gz'), await pprof.encode(wall));

  pprof.heap.start(1024, 64);
  allocate();
  const heap = pprof.heap.profile();
  pprof.heap.stop();
  fs.writeFileSync(path.join(out, 'heap.pb.gz'), await pprof.encode(heap));
  console.log(`kept ${kept.length} objects, sink ${sink > 0}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
