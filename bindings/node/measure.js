#!/usr/bin/env node
'use strict';
// One measurement of the Node binding (run it once; it is not a benchmark loop):
// 1. the ready path: µs per awaited pgEnsure on a READY target (N calls in a row), beside a
//    bare awaited Promise.resolve for scale;
// 2. the cluster figure: 8 `cluster` workers start against a server held in crash recovery
//    (they all wait), the server is released, and we report the time from the server's
//    "ready to accept connections" log line to the last worker listening.
// Needs the build (build/bindings/node/) and PostgreSQL, like the tests:
//   node bindings/node/measure.js [N]
const path = require('node:path');
const { spawn } = require('node:child_process');
const readline = require('node:readline');
const { PG, shmName } = require('./test/harness');
const wl = require('.');

async function readyPath(pg, n) {
  const shm = shmName('measure');
  await wl.pgEnsure(pg.conninfo, { shm });
  for (let i = 0; i < 1000; i++) await wl.pgEnsure(pg.conninfo, { shm }); // JIT warm-up
  let t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await wl.pgEnsure(pg.conninfo, { shm });
  const us = Number(process.hrtime.bigint() - t) / n / 1000;
  const value = { epoch: 1, role: 'follower' };
  t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await Promise.resolve(value);
  const base = Number(process.hrtime.bigint() - t) / n / 1000;
  return { us, base };
}

async function clusterFigure(pg, workers) {
  const shm = shmName('measure-cluster');
  await pg.cmd('crash');
  await pg.cmd('held');
  const mark = await pg.cmd('mark');
  const child = spawn(process.execPath, [path.join(__dirname, 'test', 'fixtures', 'cluster.js'),
    pg.conninfo, shm, String(workers)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const msgs = [];
  let wake = () => {};
  readline.createInterface({ input: child.stdout }).on('line', (l) => { msgs.push(JSON.parse(l)); wake(); });
  const until = (pred) => new Promise((resolve) => { wake = () => pred() && resolve(); wake(); });
  await until(() => msgs.filter((m) => m.type === 'ticking').length === workers);
  await pg.cmd('release');
  await until(() => msgs.filter((m) => m.type !== 'ticking').length === workers);
  child.kill();
  const up = msgs.filter((m) => m.type === 'listening');
  const readyMs = Number(await pg.cmd(`readyns ${mark}`)) / 1e6;
  const at = up.map((m) => m.at - readyMs).sort((a, b) => a - b);
  return { workers: up.length, first: at[0], last: at[at.length - 1],
    leaders: up.filter((m) => m.role === 'leader').length, epochs: new Set(up.map((m) => m.epoch)).size,
    maxLateMs: Math.max(...up.map((m) => m.maxLateMs)) };
}

(async () => {
  const n = Number(process.argv[2] || 200000);
  const pg = new PG();
  const why = await pg.setUp();
  if (why) {
    console.error(`measure: no PostgreSQL: ${why}`);
    process.exit(77);
  }
  try {
    const r = await readyPath(pg, n);
    console.log(`ready path: ${r.us.toFixed(2)} µs per awaited pgEnsure (${n} calls; ` +
      `an awaited Promise.resolve: ${r.base.toFixed(2)} µs)`);
    const c = await clusterFigure(pg, 8);
    console.log(`cluster: ${c.workers} workers, crash-recovery start held then released: first ` +
      `listening ${c.first.toFixed(0)} ms, last ${c.last.toFixed(0)} ms after the server logged ready ` +
      `(the log has ms resolution); ${c.epochs} epoch, ${c.leaders} leader, worst timer drift ` +
      `while waiting ${c.maxLateMs} ms`);
  } finally {
    await pg.close();
  }
})();
