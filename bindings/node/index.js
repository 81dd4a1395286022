'use strict';
/*
 * warmlock for Node: a thin layer over warmlock.node (addon.c).
 *
 * pgEnsure's ready path is synchronous: when the slot is READY (and verified recently
 * enough) the addon says so from the shared segment and the promise is created resolved,
 * with no thread hop. Otherwise the call joins its target's queue, served by one thread of
 * the addon's own per target; it never blocks the event loop or takes a thread of libuv's
 * pool.
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

// One native target per (segment, conninfo, warmSql), kept for the life of the process:
// its key is computed once and its waiter thread serves every call on it.
const targets = new Map();
const byConninfo = new Map(); // segment + conninfo -> the first target opened (invalidate)

function checkString(v, what, optional) {
  if (optional && (v === undefined || v === null)) return;
  if (typeof v !== 'string') throw new TypeError(`warmlock: ${what} must be a string`);
}

function checkMs(v, what) {
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !(v >= 0)) throw new RangeError(`warmlock: ${what} must be a number >= 0`);
  return v;
}

function target(conninfo, shm, warmSql) {
  checkString(conninfo, 'conninfo', false);
  checkString(shm, 'shm', true);
  checkString(warmSql, 'warmSql', true);
  const name = shm == null ? '' : shm;
  const k = name + '\0' + conninfo + '\0' + (warmSql == null ? '\0' : warmSql);
  let h = targets.get(k);
  if (h === undefined) {
    h = addon.open(shm == null ? null : shm, conninfo, warmSql == null ? null : warmSql);
    targets.set(k, h);
    const ck = name + '\0' + conninfo;
    if (!byConninfo.has(ck)) byConninfo.set(ck, h);
  }
  return h;
}

/**
 * Resolve once conninfo's server is warm and verified in this epoch (one process on the
 * host warms it up; the others wait), with { epoch, role }. Rejects with an Error carrying
 * .code ('ETIMEDOUT', 'EACCES', 'ENOENT', 'ECONNREFUSED', 'EAGAIN', 'EINVAL', 'EIO'...),
 * .errno and .sqlstate (null if none).
 */
function pgEnsure(conninfo, opts) {
  let r;
  try {
    const o = opts || {};
    const h = target(conninfo, o.shm, o.warmSql);
    r = addon.ensure(h, checkMs(o.timeoutMs, 'timeoutMs'), !!o.failFast,
      checkMs(o.maxAgeMs, 'maxAgeMs'));
  } catch (e) {
    return Promise.reject(e);
  }
  return typeof r === 'number' ? Promise.resolve({ epoch: r, role: 'follower' }) : r;
}

/** Mark conninfo's slot stale if it is still READY at epoch: true if this call did. */
function invalidate(conninfo, epoch, opts) {
  const o = opts || {};
  checkString(conninfo, 'conninfo', false);
  checkString(o.shm, 'shm', true);
  const h = byConninfo.get((o.shm == null ? '' : o.shm) + '\0' + conninfo) ||
    target(conninfo, o.shm, null);
  return addon.invalidate(h, epoch);
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

module.exports = { pgEnsure, invalidate, status, key, version: addon.version };
