'use strict';
// What the node tests share: the addon's build directory, the throwaway PostgreSQL (the C
// harness, tests/harness/pgharness.c, through wl-node-pghelper's line protocol), segment
// names of their own, and the CLI.
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');

const root = path.resolve(__dirname, '..', '..', '..');
const addon = process.env.WARMLOCK_NODE_ADDON ||
  path.join(root, 'build', 'bindings', 'node', 'warmlock.node');
const buildDir = path.dirname(addon);
const helperPath = process.env.WARMLOCK_NODE_PGHELPER || path.join(buildDir, 'wl-node-pghelper');
const cliPath = process.env.WARMLOCK_CLI ||
  path.resolve(buildDir, '..', '..', 'coordinator', 'warmlock');
process.env.WARMLOCK_NODE_ADDON = addon;

let shmSeq = 0;
/** A segment name of this test process's own; removed at exit. */
function shmName(tag) {
  const name = `/wlnode.${process.pid}.${tag || 't'}.${shmSeq++}`;
  names.push(name);
  return name;
}
const names = [];
process.on('exit', () => {
  for (const n of names) {
    try { fs.unlinkSync('/dev/shm' + n); } catch { /* not there */ }
  }
});

/** `warmlock --shm NAME ARGS...`: its stdout (throws on a nonzero exit). */
function cli(shm, ...args) {
  return execFileSync(cliPath, ['--shm', shm, ...args], { encoding: 'utf8' });
}

/** A throwaway PostgreSQL server driven through wl-node-pghelper. */
class PG {
  constructor() {
    this.proc = null;
    this.waiting = [];
    this.conninfo = null;
  }

  spawn() {
    // (a sanitizer runtime preloaded into node for the addon is not for the server programs)
    const env = { ...process.env };
    delete env.LD_PRELOAD;
    this.proc = spawn(helperPath, [], { stdio: ['pipe', 'pipe', 'inherit'], env });
    this.lines = readline.createInterface({ input: this.proc.stdout });
    this.lines.on('line', (l) => {
      const w = this.waiting.shift();
      if (w) w(l);
    });
    const gone = (why) => {
      for (const w of this.waiting.splice(0)) w(`err helper ${why}`);
    };
    this.proc.on('error', (e) => gone(`failed: ${e.message}`));
    this.proc.on('exit', () => gone('exited'));
  }

  /** Run one command; its value, or throws with the helper's message. */
  cmd(line) {
    return new Promise((resolve, reject) => {
      this.waiting.push((l) => {
        if (l === 'ok' || l.startsWith('ok ')) resolve(l.slice(3));
        else reject(new Error(`pghelper ${line.split(' ')[0]}: ${l.replace(/^err ?/, '')}`));
      });
      this.proc.stdin.write(line + '\n');
    });
  }

  /** A new cluster, started. Returns null, or why PostgreSQL cannot be used here. */
  async setUp() {
    if (!fs.existsSync(helperPath)) return `${helperPath} is not built`;
    this.spawn();
    try {
      await this.cmd('unavailable');
    } catch (e) {
      return e.message;
    }
    this.conninfo = await this.cmd('init');
    await this.cmd('start');
    return null;
  }

  /** conninfo with dbname replaced. */
  withDb(db) {
    return this.conninfo.replace(/dbname=\S+/, `dbname=${db}`);
  }

  /** Stop and remove the cluster; the helper exits (it also does when its stdin closes). */
  async close() {
    if (!this.proc) return;
    if (this.proc.exitCode === null) {
      try { await this.cmd('quit'); } catch { /* gone */ }
    }
    this.proc.stdin.end();
  }
}

/** Threads of this process now. */
function threadCount() {
  return fs.readdirSync('/proc/self/task').length;
}

module.exports = { root, addon, buildDir, helperPath, cliPath, shmName, cli, PG, threadCount };
