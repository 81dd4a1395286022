'use strict';
// A `cluster` HTTP server on warmlock: every worker awaits pgEnsure before it listens (one
// worker on the host warms PostgreSQL up, the others wait for it without probing), and a
// request that hits a broken connection invalidates the epoch, so one process re-verifies
// for all instead of every worker retrying on its own.
//
//   DATABASE_URL=postgresql:///app?host=/run/postgresql node cluster-server.js
//
// Environment: DATABASE_URL (a libpq conninfo or URI), PORT (default 3000; 0: any),
// WORKERS (default: one per CPU), WARM_SQL (run once per epoch by the leader),
// WARMLOCK_SHM (the segment; the default is per user). Under PM2 (ecosystem.config.js) PM2
// is the primary: this file then runs as a worker only and says `ready` to PM2 once it
// listens (wait_ready).
//
// Queries go through node-postgres (`pg`) when it is installed (npm install pg); without
// it, through warmlock's own check (wl.pgCheck), a connection of its own per request.
const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

function load(name, fallback) {
  try {
    return require(name);
  } catch (e) {
    if (e.code !== 'MODULE_NOT_FOUND' || !fallback) throw e;
    return require(fallback);
  }
}
const wl = load('warmlock', '..');
let pg = null;
try {
  pg = require('pg');
} catch {
  // no node-postgres: warmlock's own check stands in for the application's queries
}

const url = process.env.DATABASE_URL || 'postgresql:///postgres';
const port = Number(process.env.PORT || 3000);
const workers = Number(process.env.WORKERS || os.availableParallelism());
const underPm2 = 'pm_id' in process.env;

// A failure that means the connection (or the server) is gone, not a bad query.
function connectionError(e) {
  const c = String(e.code || '');
  return c === 'ECONNREFUSED' || c === 'ECONNRESET' || c === 'EPIPE' || c === 'ENOTFOUND' ||
    c.startsWith('08') || c === '57P01' || c === '57P02' || c === '57P03' ||
    /Connection terminated/.test(e.message);
}

async function worker() {
  // Instead of a fixed sleep: wait until the server is warm and verified for the host.
  let { epoch, role } = await wl.pgEnsure(url, { timeoutMs: 60000, warmSql: process.env.WARM_SQL });
  const pool = pg ? new pg.Pool({ connectionString: url, max: 4 }) : null;
  if (pool) pool.on('error', () => {}); // an idle client's broken connection: the next query says so
  const query = pool ? (sql) => pool.query(sql) : (sql) => wl.pgCheck(url, { sql });

  const server = http.createServer(async (req, res) => {
    try {
      // The ready path (a microsecond or two, no syscall); during an outage, fail at once
      // rather than hold the request.
      ({ epoch } = await wl.pgEnsure(url, { failFast: true, timeoutMs: 2000 }));
      await query('SELECT 1');
      res.end(`ok epoch ${epoch} pid ${process.pid}\n`);
    } catch (e) {
      if (connectionError(e)) wl.invalidate(url, epoch); // one process re-verifies for all
      res.statusCode = 503;
      res.setHeader('Retry-After', '1');
      res.end(`unavailable: ${e.code || ''} ${e.message}\n`);
    }
  });
  server.listen(port, () => {
    const info = { type: 'listening', pid: process.pid, port: server.address().port, epoch, role };
    if (process.send) process.send(underPm2 ? 'ready' : info);
    else console.log(JSON.stringify(info));
  });
}

function primary() {
  let up = 0;
  let stopping = false;
  const start = Date.now();
  cluster.on('message', (w, m) => {
    if (m && m.type === 'listening' && ++up === workers)
      console.log(JSON.stringify({ type: 'all-listening', workers, port: m.port, epoch: m.epoch,
        ms: Date.now() - start }));
  });
  cluster.on('exit', (w, code, signal) => {
    if (!stopping) {
      console.error(`worker ${w.process.pid} exited (${signal || code}); starting another`);
      setTimeout(() => cluster.fork(), 1000);
    }
  });
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      stopping = true;
      for (const w of Object.values(cluster.workers)) w.kill();
      process.exit(0);
    });
  }
  for (let i = 0; i < workers; i++) cluster.fork();
}

if (cluster.isPrimary && !underPm2) {
  primary();
} else {
  worker().catch((e) => {
    console.error(`worker ${process.pid}: PostgreSQL not ready: ${e.code} ${e.sqlstate || ''} ${e.message}`);
    process.exit(1);
  });
}
