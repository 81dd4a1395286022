'use strict';
// The binding against a real PostgreSQL (one throwaway server for the file, stopped,
// crashed and held in recovery as the tests need). Verdicts rest on held states, never on
// how fast the machine is; time bounds are generous upper bounds.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fsp = require('node:fs/promises');
const path = require('node:path');
const readline = require('node:readline');
const http = require('node:http');
const { PG, shmName, cli, threadCount } = require('./harness');
const wl = require('..');

const pg = new PG();
let skipReason = null;

before(async () => {
  const why = await pg.setUp();
  if (why) skipReason = `no PostgreSQL: ${why}`;
});
after(() => pg.close());

/** A test that needs the server: skipped with the reason when there is none. */
function pgTest(name, fn) {
  test(name, { timeout: 180000 }, async (t) => {
    if (skipReason) return t.skip(skipReason);
    await pg.cmd('up');
    return fn(t);
  });
}

/** Settle state of a promise without waiting for it. */
function tracked(p) {
  const s = { settled: false, value: undefined, error: undefined };
  s.promise = p.then((v) => { s.settled = true; s.value = v; return v; },
    (e) => { s.settled = true; s.error = e; throw e; });
  s.promise.catch(() => {});
  return s;
}

/** fs work that needs libuv's thread pool: reads and stats of this directory's files. */
async function fsWork(rounds) {
  const files = (await fsp.readdir(__dirname)).map((f) => path.join(__dirname, f));
  let n = 0;
  for (let i = 0; i < rounds; i++) {
    const all = await Promise.all(files.map(async (f) => {
      const st = await fsp.stat(f);
      if (st.isFile()) await fsp.readFile(f);
      return 1;
    }));
    n += all.length;
  }
  return n;
}

pgTest('ready_path_invalidate_reverify', async () => {
  const shm = shmName('inv');
  const a = await wl.pgEnsure(pg.conninfo, { shm });
  assert.equal(a.role, 'leader');
  assert.ok(a.epoch >= 1);
  const b = await wl.pgEnsure(pg.conninfo, { shm });
  assert.deepEqual(b, { epoch: a.epoch, role: 'follower' });
  assert.equal(wl.invalidate(pg.conninfo, a.epoch, { shm }), true);
  assert.equal(wl.invalidate(pg.conninfo, a.epoch, { shm }), false, 'second invalidation');
  const c = await wl.pgEnsure(pg.conninfo, { shm });
  assert.ok(c.epoch > a.epoch, `epoch ${c.epoch} after ${a.epoch}`);
  assert.equal(c.role, 'leader');
  assert.equal(wl.invalidate(pg.conninfo, a.epoch, { shm }), false, 'an old epoch is ignored');
  // a READY verified longer ago than maxAgeMs is re-verified (through the waiter) in its epoch
  const attempts = wl.status({ shm })[0].attempts;
  await new Promise((r) => setTimeout(r, 30));
  assert.equal((await wl.pgEnsure(pg.conninfo, { shm, maxAgeMs: 10 })).epoch, c.epoch);
  assert.equal(wl.status({ shm })[0].attempts, attempts + 1, 'one re-verification');
  assert.equal((await wl.pgEnsure(pg.conninfo, { shm, maxAgeMs: Infinity })).epoch, c.epoch);
  const slot = wl.status({ shm }).find((s) => s.key === wl.key(pg.conninfo, { shm }));
  assert.equal(slot.state, 'ready');
  assert.equal(slot.invalidations, 1);
});

pgTest('missing_database_ENOENT_3D000', async () => {
  const shm = shmName('nodb');
  const t0 = performance.now();
  await assert.rejects(wl.pgEnsure(pg.withDb('no_such_db'), { shm, timeoutMs: 60000 }), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.code, 'ENOENT');
    assert.equal(e.errno, -2);
    assert.equal(e.sqlstate, '3D000');
    assert.match(e.message, /no_such_db/);
    return true;
  });
  // a permanent failure is not waited out: well under the 60 s deadline
  assert.ok(performance.now() - t0 < 30000);
  // a second caller within fail_ttl is served the published failure
  await assert.rejects(wl.pgEnsure(pg.withDb('no_such_db'), { shm }), { code: 'ENOENT', sqlstate: '3D000' });
});

pgTest('status_equals_cli_json', async () => {
  const shm = shmName('status');
  await wl.pgEnsure(pg.conninfo, { shm });
  await wl.pgEnsure(pg.conninfo, { shm });
  await assert.rejects(wl.pgEnsure(pg.withDb('no_such_db'), { shm }), { code: 'ENOENT' });
  // a key and a server message that are not ASCII
  await assert.rejects(wl.pgEnsure(pg.withDb('n\u00f6_db_\u2603'), { shm }), { code: 'ENOENT' });
  await assert.rejects(wl.pgEnsure('host=/nonexistent.wlnode dbname=x', { shm, timeoutMs: 100 }),
    { code: 'ETIMEDOUT' });
  // ages are read at three moments: ours before and after, the CLI's in between
  const mine = wl.status({ shm });
  const json = JSON.parse(cli(shm, 'status', '--json'));
  const later = wl.status({ shm });
  assert.equal(json.segment, shm);
  const theirs = json.slots;
  assert.equal(mine.length, 4);
  assert.equal(mine.length, theirs.length);
  const ages = new Set(['ready_age_ms', 'down_ms']);
  for (let i = 0; i < mine.length; i++) {
    assert.deepEqual(Object.keys(mine[i]), Object.keys(theirs[i]), 'the same fields in the same order');
    for (const k of Object.keys(theirs[i])) {
      if (ages.has(k)) {
        assert.equal(mine[i][k] === null, theirs[i][k] === null, `${k} null-ness`);
        if (mine[i][k] !== null)
          assert.ok(mine[i][k] <= theirs[i][k] && theirs[i][k] <= later[i][k],
            `${k}: ${mine[i][k]} <= ${theirs[i][k]} <= ${later[i][k]}`);
      } else {
        assert.deepEqual(mine[i][k], theirs[i][k], `slot ${i} field ${k}`);
      }
    }
  }
  const states = mine.map((s) => s.state).sort();
  assert.deepEqual(states, ['failed', 'failed', 'ready', 'stale']);
  assert.ok(mine.some((x) => x.key.includes('n\u00f6_db_\u2603')));
});

pgTest('concurrent_100_ready_fs_not_starved', async () => {
  const shm = shmName('c100r');
  const first = await wl.pgEnsure(pg.conninfo, { shm });
  await fsWork(1); // libuv starts its pool's threads on first use
  const threads = threadCount();
  const fsDone = fsWork(3);
  const calls = Array.from({ length: 100 }, () => wl.pgEnsure(pg.conninfo, { shm }));
  const [n, results] = await Promise.all([fsDone, Promise.all(calls)]);
  assert.ok(n > 0);
  for (const r of results) assert.deepEqual(r, { epoch: first.epoch, role: 'follower' });
  assert.equal(threadCount(), threads, 'the ready path starts no thread');
});

pgTest('concurrent_100_waiting_fs_not_starved', async () => {
  const shm = shmName('c100w');
  await pg.cmd('stop');
  await pg.cmd('held');
  await fsWork(1); // libuv starts its pool's threads on first use
  const threads = threadCount();
  const mark = await pg.cmd('mark');
  const calls = Array.from({ length: 100 }, () => tracked(wl.pgEnsure(pg.conninfo, { shm, timeoutMs: 120000 })));
  // the leader probes the held server: it answers 57P03, so every call is still waiting
  await pg.cmd(`wait57 ${mark} 2 60000`);
  // libuv's pool (4 threads) is free: fs work completes while 100 waits are pending
  const n = await fsWork(5);
  assert.ok(n > 0);
  assert.equal(calls.filter((c) => c.settled).length, 0, 'no call settled while the server is held');
  const added = threadCount() - threads;
  assert.ok(added <= 4, `${added} threads for 100 waiting calls (at most 4 per target)`);
  await pg.cmd('release');
  const results = await Promise.all(calls.map((c) => c.promise));
  const epochs = new Set(results.map((r) => r.epoch));
  assert.equal(epochs.size, 1, 'one epoch');
  assert.ok(results.filter((r) => r.role === 'leader').length <= 1, 'at most one leader');
});

pgTest('cluster_8_workers_crash_recovery', async (t) => {
  const shm = shmName('cluster');
  await pg.cmd('crash');
  await pg.cmd('held'); // replays the crash's WAL, then stays in recovery until released
  const mark = await pg.cmd('mark');
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'cluster.js'),
    pg.conninfo, shm, '8'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const msgs = [];
  let onMsg = () => {};
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    msgs.push(JSON.parse(l));
    onMsg();
  });
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  const until = (pred, what) => new Promise((resolve, reject) => {
    onMsg = () => { if (pred()) resolve(); };
    exited.then(() => { if (!pred()) reject(new Error(`cluster exited before ${what}`)); });
    onMsg();
  });
  try {
    // every worker's loop ticks 20 times while its pgEnsure waits on the held server
    await until(() => msgs.filter((m) => m.type === 'ticking').length === 8, '8 workers ticking');
    await pg.cmd(`wait57 ${mark} 1 60000`);
    assert.equal(msgs.filter((m) => m.type === 'listening').length, 0, 'nobody listens before the release');
    await pg.cmd('release');
    await until(() => msgs.filter((m) => m.type === 'listening' || m.type === 'error').length === 8,
      '8 workers reporting');
    assert.equal(await exited, 0);
  } finally {
    child.kill();
  }
  const errors = msgs.filter((m) => m.type === 'error');
  assert.deepEqual(errors, [], 'no worker failed');
  const up = msgs.filter((m) => m.type === 'listening');
  assert.equal(new Set(up.map((m) => m.epoch)).size, 1, 'one epoch');
  assert.ok(up.filter((m) => m.role === 'leader').length <= 1, 'at most one leader');
  for (const m of up) assert.ok(m.ticks >= 20, `worker ${m.worker} ticked ${m.ticks} times while waiting`);
  const maxLate = Math.max(...up.map((m) => m.maxLateMs));
  // a blocked loop would be late by the whole hold; a busy 2-core machine, by far less
  assert.ok(maxLate < 5000, `timer drift ${maxLate} ms`);
  const readyMs = Number(await pg.cmd(`readyns ${mark}`)) / 1e6;
  const lastUp = Math.max(...up.map((m) => m.at));
  t.diagnostic(`cluster: 8 workers listening ${Math.round(lastUp - readyMs)} ms after the server ` +
    `logged ready (ms resolution); worst timer drift while waiting ${maxLate} ms`);
});

pgTest('pgcheck_and_invalidate_on_connection_error', async () => {
  const shm = shmName('check');
  const { epoch } = await wl.pgEnsure(pg.conninfo, { shm });
  assert.equal(await wl.pgCheck(pg.conninfo, { shm }), undefined);
  await assert.rejects(wl.pgCheck(pg.conninfo, { shm, sql: 'SELECT 1/0' }),
    { code: 'EIO', sqlstate: '22012' });
  await pg.cmd('stop');
  // the slot is still READY (nobody has looked): the ready path answers, the check fails
  assert.deepEqual(await wl.pgEnsure(pg.conninfo, { shm, failFast: true }), { epoch, role: 'follower' });
  // the check's own connection fails where the slot said READY: the epoch ends (the
  // library invalidates it, so ours finds nothing left to do)
  await assert.rejects(wl.pgCheck(pg.conninfo, { shm, timeoutMs: 5000 }), { code: 'ECONNREFUSED' });
  assert.equal(wl.invalidate(pg.conninfo, epoch, { shm }), false);
  assert.equal(wl.status({ shm })[0].invalidations, 1);
  // now an outage: fail-fast says so at once
  await assert.rejects(wl.pgEnsure(pg.conninfo, { shm, failFast: true }), { code: 'ECONNREFUSED' });
  const waiting = tracked(wl.pgEnsure(pg.conninfo, { shm, timeoutMs: 120000 }));
  await pg.cmd('start');
  const again = await waiting.promise;
  assert.ok(again.epoch > epoch);
});

pgTest('example_cluster_server', async () => {
  const shm = shmName('example');
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'examples', 'cluster-server.js')], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, DATABASE_URL: pg.conninfo, PORT: '0', WORKERS: '2', WARMLOCK_SHM: shm },
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  try {
    const all = await new Promise((resolve, reject) => {
      readline.createInterface({ input: child.stdout }).on('line', (l) => {
        const m = JSON.parse(l);
        if (m.type === 'all-listening') resolve(m);
      });
      exited.then(() => reject(new Error('the example exited')));
    });
    const get = () => new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: all.port, path: '/' }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve({ status: res.statusCode, body }));
      }).on('error', reject);
    });
    const ok = await get();
    assert.equal(ok.status, 200, ok.body);
    assert.match(ok.body, new RegExp(`^ok epoch ${all.epoch} `));
    await pg.cmd('stop');
    const down = await get();
    assert.equal(down.status, 503, down.body);
    const slot = wl.status({ shm })[0];
    assert.equal(slot.invalidations, 1, 'the failed check invalidated the epoch');
    await pg.cmd('start');
    // until a worker has re-verified for all (a liveness loop: no verdict on speed)
    let r = await get();
    for (const t0 = performance.now(); r.status !== 200 && performance.now() - t0 < 60000;) {
      await new Promise((res) => setTimeout(res, 50));
      r = await get();
    }
    assert.equal(r.status, 200, r.body);
    assert.ok(Number(/epoch (\d+)/.exec(r.body)[1]) > all.epoch, r.body);
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
});

pgTest('fleet_two_hosts_one_warm_sql', async () => {
  // warm_sql can run only once: a second run would fail on the primary key
  await pg.cmd('sql DROP TABLE IF EXISTS node_fleet_once');
  await pg.cmd('sql CREATE TABLE node_fleet_once (id int PRIMARY KEY)');
  const warmSql = 'INSERT INTO node_fleet_once VALUES (1)';
  const a = shmName('fleet-a');
  const b = shmName('fleet-b');
  assert.equal((await wl.pgEnsure(pg.conninfo, { shm: a, warmSql, fleet: true })).role, 'leader');
  assert.equal((await wl.pgEnsure(pg.conninfo, { shm: b, warmSql, fleet: true })).role, 'leader');
  const [sa] = wl.status({ shm: a });
  const [sb] = wl.status({ shm: b });
  assert.equal(sa.fleet, 'led');
  assert.equal(sb.fleet, 'skipped');
  assert.equal(sb.fleet_leader_pid, sa.fleet_leader_pid);
  assert.match(sb.fleet_leader_app, /^warmlock-fleet /);
  // without fleet mode a third host runs it again, and fails on the key
  await assert.rejects(wl.pgEnsure(pg.conninfo, { shm: shmName('fleet-c'), warmSql }), { code: 'EIO' });
});
