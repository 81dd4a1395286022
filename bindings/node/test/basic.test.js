'use strict';
// The binding without a server: argument and conninfo errors, status of a missing segment,
// waits on an unreachable target (the loop ticks, deadlines hold, fail-fast is not queued
// behind a long wait), and the life cycle: a pending wait keeps node alive, an idle target
// does not, and a worker thread or a process may go away with waits pending.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const { Worker } = require('node:worker_threads');
const { shmName, threadCount } = require('./harness');
const wl = require('..');

// Nothing listens at a socket in a directory that does not exist: every probe is refused.
const NOWHERE = 'host=/nonexistent.wlnode port=5432 dbname=nowhere user=nobody';

function runNode(code, timeoutMs) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    execFile(process.execPath, ['-e', code], { timeout: timeoutMs, env: process.env },
      (err, stdout, stderr) => resolve({ code: err ? err.code ?? err.signal : 0, killed: !!err?.killed,
        stdout, stderr, ms: performance.now() - t0 }));
  });
}

test('bad_conninfo_EINVAL', async () => {
  const shm = shmName('inval');
  await assert.rejects(wl.pgEnsure('nosuchoption=1', { shm }), (e) => {
    assert.equal(e.code, 'EINVAL');
    assert.equal(e.errno, -22);
    assert.equal(e.sqlstate, null);
    assert.match(e.message, /nosuchoption/);
    return true;
  });
  await assert.rejects(wl.pgEnsure('password=hunter2 nosuchoption=1', { shm }), (e) => {
    assert.doesNotMatch(e.message, /hunter2/, 'the password is masked');
    return true;
  });
});

test('argument_errors_reject', async () => {
  await assert.rejects(wl.pgEnsure(42), TypeError);
  await assert.rejects(wl.pgEnsure(NOWHERE, { timeoutMs: -1 }), RangeError);
  await assert.rejects(wl.pgEnsure(NOWHERE, { shm: 7 }), TypeError);
  assert.throws(() => wl.invalidate(NOWHERE, 'one', { shm: shmName('arg') }), TypeError);
});

test('status_missing_segment_ENOENT', () => {
  assert.throws(() => wl.status({ shm: '/wlnode.never.created' }), { code: 'ENOENT' });
  assert.throws(() => wl.status({ shm: 'no-slash' }), { code: 'EINVAL' });
});

test('unreachable_times_out_loop_ticks', async () => {
  const shm = shmName('nowhere');
  let ticks = 0;
  const iv = setInterval(() => ticks++, 5);
  const t0 = performance.now();
  try {
    await assert.rejects(wl.pgEnsure(NOWHERE, { shm, timeoutMs: 400 }), (e) => {
      assert.equal(e.code, 'ETIMEDOUT');
      assert.match(e.message, /nonexistent\.wlnode/);
      return true;
    });
  } finally {
    clearInterval(iv);
  }
  const ms = performance.now() - t0;
  assert.ok(ms >= 390, `rejected after ${ms} ms, before the deadline`);
  assert.ok(ms < 20000, `rejected after ${ms} ms`);
  // a loop blocked in the call would not tick before the rejection is handled
  assert.ok(ticks >= 2, `the loop ticked ${ticks} times while waiting`);
});

// In a process of its own, which exits with its 60 s wait still pending.
test('fail_fast_and_checks_not_queued_behind_a_long_wait', async () => {
  const code = `const wl = require(${JSON.stringify(require.resolve('..'))});
    const fs = require('node:fs');
    const threads = () => fs.readdirSync('/proc/self/task').length;
    const NOWHERE = ${JSON.stringify(NOWHERE)}, shm = ${JSON.stringify(shmName('ff'))};
    const out = {};
    (async () => {
      let longDone = false;
      wl.pgEnsure(NOWHERE, { shm, timeoutMs: 60000 }).catch(() => { longDone = true; });
      // let the long call start (the outage clock starts with its first failed probe)
      await new Promise((r) => setTimeout(r, 50));
      const t0 = threads();
      await wl.pgEnsure(NOWHERE, { shm, failFast: true }).catch((e) => { out.ff = e.code; out.ffMsg = e.message; });
      await wl.pgEnsure(NOWHERE, { shm, timeoutMs: 200 }).catch((e) => { out.short = e.code; });
      await wl.pgCheck(NOWHERE, { shm, timeoutMs: 300 }).catch((e) => { out.check = e.code; });
      const many = Array.from({ length: 50 }, () => wl.pgEnsure(NOWHERE, { shm, timeoutMs: 300 }));
      out.added = threads() - t0;
      out.many = [...new Set(await Promise.all(many.map((p) => p.catch((e) => e.code))))];
      out.longDone = longDone;
      console.log(JSON.stringify(out));
      process.exit(0);
    })();`;
  const r = await runNode(code, 60000);
  assert.equal(r.killed, false, 'answered before the long call\'s deadline');
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.ok(['ECONNREFUSED', 'ETIMEDOUT', 'EAGAIN'].includes(out.ff), out.ff);
  assert.match(out.ffMsg, /fail-fast|down/);
  assert.equal(out.short, 'ETIMEDOUT');
  assert.ok(['ECONNREFUSED', 'ETIMEDOUT'].includes(out.check), out.check);
  assert.deepEqual(out.many, ['ETIMEDOUT']);
  assert.equal(out.longDone, false, 'the long call still waits');
  assert.ok(out.added <= 3, `${out.added} more threads (at most 4 waiters per target)`);
});

test('pending_wait_keeps_node_alive_idle_target_does_not', async () => {
  const code = `const wl = require(${JSON.stringify(require.resolve('..'))});
    wl.pgEnsure(${JSON.stringify(NOWHERE)}, { shm: ${JSON.stringify(shmName('alive'))}, timeoutMs: 300 })
      .catch((e) => console.log('settled', e.code));`;
  const r = await runNode(code, 60000);
  assert.equal(r.killed, false, 'node exited once the wait settled');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'settled ETIMEDOUT');
});

test('process_exit_with_pending_waits', async () => {
  const code = `const wl = require(${JSON.stringify(require.resolve('..'))});
    for (let i = 0; i < 20; i++) wl.pgEnsure(${JSON.stringify(NOWHERE)},
      { shm: ${JSON.stringify(shmName('exit'))}, timeoutMs: 60000 }).catch(() => {});
    setTimeout(() => process.exit(3), 100);`;
  const r = await runNode(code, 30000);
  assert.equal(r.killed, false);
  assert.equal(r.code, 3, r.stderr);
});

// A worker's environment is torn down while its waiter threads are in calls: they finish
// later, find its threadsafe function finalized, and leave without touching it.
test('worker_thread_terminated_with_pending_waits', async () => {
  const shm = shmName('worker');
  const src = `const { parentPort } = require('node:worker_threads');
    const wl = require(${JSON.stringify(require.resolve('..'))});
    for (let i = 0; i < 10; i++) wl.pgEnsure(${JSON.stringify(NOWHERE)}, { shm: ${JSON.stringify(shm)},
      timeoutMs: 600, warmSql: 'SELECT ' + i % 3 }).catch(() => {});
    wl.pgEnsure(${JSON.stringify(NOWHERE)}, { shm: ${JSON.stringify(shm)}, timeoutMs: 100 })
      .catch((e) => parentPort.postMessage(e.code));`;
  const threads = threadCount();
  for (let round = 0; round < 3; round++) {
    const w = new Worker(src, { eval: true });
    const msg = await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    assert.equal(msg, 'ETIMEDOUT');
    await w.terminate();
  }
  // the workers' waiters leave once their calls return (600 ms deadlines)
  const t0 = performance.now();
  while (threadCount() > threads && performance.now() - t0 < 30000)
    await new Promise((r) => setTimeout(r, 20));
  assert.ok(threadCount() <= threads, `${threadCount() - threads} threads left behind`);
  // this thread's own binding still works after the workers' teardown
  await assert.rejects(wl.pgEnsure(NOWHERE, { shm, timeoutMs: 100 }), { code: 'ETIMEDOUT' });
});
