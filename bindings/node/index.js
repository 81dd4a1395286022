'use strict';
/*
 * warmlock for Node: a thin layer over warmlock.node (addon.c).
 *
 * pgEnsure's ready path is synchronous: when the slot is READY (and verified recently
 * enough) the addon says so from the shared segment and the promise is created resolved,
 * with no thread hop. Otherwise the call joins its target's queue, served by the addon's
 * own waiter thread for that target (one, and up to four when a call cannot wait for the
 * one in flight); it never blocks the event loop or takes a thread of libuv's pool.
 */
const fs = require('fs');
const path = require('path');

function loadAddon() {
  const candidates = [];
  if (process.env.WARMLOCK_NODE_ADDON) candidates.push(process.env.WARMLOCK_NODE_ADDON);
  candidates.push(path.join(__dirname, '..', '..', 'build', 'bindings', 'node', 'warmlock.node'));
  candidates.push(path.join(__dirname, 'warmlock.node'));
  for (const c of candidates) {
    if (fs.existsSync(c)) return require(path.resolve(c));
  }
  const err = new Error('warmlock: the addon warmlock.node was not found (looked at ' +
    candidates.join(', ') + '); build it with meson (ninja -C build) or set WARMLOCK_NODE_ADDON');
  err.code = 'MODULE_NOT_FOUND';
  throw err;
}

const addon = loadAddon();
const EMPTY = Object.freeze({});

function checkString(v, what, optional) {
  if (optional && (v === undefined || v === null)) return;
  if (typeof v !== 'string') throw new TypeError(`warmlock: ${what} must be a string`);
}

function checkMs(v, what) {
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !(v >= 0)) throw new RangeError(`warmlock: ${what} must be a number >= 0`);
  return v;
}

// One native target per (segment, conninfo, warmSql), kept for the life of the process:
// its key is computed once and its waiter thread serves every call on it. Looked up
// conninfo -> segment -> warmSql, each a Map keyed by the caller's own strings (no string
// is built per call).
const targets = new Map();

function target(conninfo, shm, warmSql, fleet) {
  let bySeg = targets.get(conninfo);
  if (bySeg === undefined) {
    checkString(conninfo, 'conninfo', false);
    targets.set(conninfo, (bySeg = new Map()));
  }
  const s = shm == null ? '' : shm;
  let bySql = bySeg.get(s);
  if (bySql === undefined) {
    checkString(shm, 'shm', true);
    bySeg.set(s, (bySql = new Map()));
  }
  const w = warmSql == null ? null : warmSql;
  // fleet mode is part of the target: a key of its own (no SQL holds a NUL)
  const mk = fleet ? 'fleet\0' + (w === null ? '\0' : w) : w;
  let h = bySql.get(mk);
  if (h === undefined) {
    checkString(warmSql, 'warmSql', true);
    h = addon.open(s === '' ? null : s, conninfo, w, !!fleet);
    bySql.set(mk, h);
  }
  return h;
}

/** Any target of conninfo in the segment (they share its slot), opened if there is none. */
function anyTarget(conninfo, shm) {
  const bySql = targets.get(conninfo)?.get(shm == null ? '' : shm);
  if (bySql !== undefined) for (const h of bySql.values()) return h;
  return target(conninfo, shm, null);
}

/**
 * Resolve once conninfo's server is warm and verified in this epoch (one process on the
 * host warms it up; the others wait), with { epoch, role }. Rejects with an Error carrying
 * .code ('ETIMEDOUT', 'EACCES', 'ENOENT', 'ECONNREFUSED', 'EAGAIN', 'EINVAL', 'EIO'...),
 * .errno and .sqlstate (null if none).
 */
function pgEnsure(conninfo, opts) {
  try {
    const o = opts || EMPTY;
    // the options first: a bad one is the caller's error whatever state the segment is in
    const timeout = checkMs(o.timeoutMs, 'timeoutMs');
    const maxAge = o.maxAgeMs === undefined ? undefined : checkMs(o.maxAgeMs, 'maxAgeMs');
    const h = target(conninfo, o.shm, o.warmSql, o.fleet);
    const epoch = maxAge === undefined ? addon.ready(h) : addon.ready(h, maxAge);
    if (epoch >= 0) return Promise.resolve({ epoch, role: 'follower' });
    return addon.wait(h, timeout, !!o.failFast, checkMs(maxAge, 'maxAgeMs'));
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * Warmlock's own check, for programs without a PostgreSQL client of their own: the
 * library's own connection (wl_pg_connect: after pgEnsure's single-flight, fail-fast) on
 * the target's waiter thread, never the event loop, `sql` (default SELECT 1) on it, closed.
 * Resolves with undefined; rejects with pgEnsure's codes, 'ECONNREFUSED' (the connection
 * failed although the slot was READY: the library has ended the epoch), 'ECONNRESET' (it
 * broke during the SQL), 'EIO' (the SQL failed: .sqlstate). A program that sees a
 * connection error calls invalidate(conninfo, epoch), as after a query of its own.
 */
function pgCheck(conninfo, opts) {
  try {
    const o = opts || EMPTY;
    checkString(o.sql, 'sql', true);
    const timeout = checkMs(o.timeoutMs, 'timeoutMs');
    return addon.wait(anyTarget(conninfo, o.shm), timeout || 5000, false, 0,
      o.sql == null ? 'SELECT 1' : o.sql);
  } catch (e) {
    return Promise.reject(e);
  }
}

/** Mark conninfo's slot stale if it is still READY at epoch: true if this call did. */
function invalidate(conninfo, epoch, opts) {
  const o = opts || {};
  checkString(conninfo, 'conninfo', false);
  checkString(o.shm, 'shm', true);
  return addon.invalidate(anyTarget(conninfo, o.shm), epoch);
}

/** The slots of the segment, with the fields (and values) of `warmlock status --json`. */
function status(opts) {
  const o = opts || {};
  checkString(o.shm, 'shm', true);
  return addon.status(o.shm == null ? null : o.shm);
}

/** The slot key of conninfo in the segment (what status() shows; never the password). */
function key(conninfo, opts) {
  const o = opts || {};
  return addon.key(target(conninfo, o.shm, o.warmSql));
}

module.exports = { pgEnsure, invalidate, status, key, pgCheck, version: addon.version };
