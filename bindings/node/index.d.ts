// Type declarations for warmlock's Node binding.

export interface EnsureOptions {
  /** Whole-call deadline in ms (default 30000). */
  timeoutMs?: number;
  /** SQL the leader runs once per epoch (may hold several statements). */
  warmSql?: string | null;
  /** During an outage, reject at once with the current transient failure instead of waiting. */
  failFast?: boolean;
  /** Fleet mode (WL_PG_FLEET): warmSql runs once per server start for every host (every
   * segment) that shares the target; see the README's "Fleet mode". */
  fleet?: boolean;
  /** Segment name (default $WARMLOCK_SHM, then /warmlock.<uid>). */
  shm?: string | null;
  /** READY verified longer ago than this is re-verified once, through the single-flight
   * (default: the engine's, 10000; Infinity: never). */
  maxAgeMs?: number;
}

export interface Ready {
  /** The readiness epoch observed: pass it to invalidate(). */
  epoch: number;
  /** What this call was: the one that warmed the server up, or one that waited. */
  role: 'leader' | 'follower';
}

/** A rejection of pgEnsure. */
export interface WarmlockError extends Error {
  /** 'ETIMEDOUT', 'EACCES', 'ENOENT', 'ECONNREFUSED', 'EAGAIN', 'EINVAL', 'EIO', ... */
  code: string;
  /** The negative errno. */
  errno: number;
  /** SQLSTATE of the failure, null if none. */
  sqlstate: string | null;
}

export interface HistBucket {
  /** Upper bound of the bucket in ms; null for the last one (+Inf). */
  lt_ms: number | null;
  count: number;
}

/** One slot: the fields of `warmlock status --json`. */
export interface SlotStatus {
  key: string;
  key_len: number;
  key_hash: string;
  state: 'cold' | 'warming' | 'ready' | 'stale' | 'failed';
  stage: 'none' | 'reachable' | 'authenticated' | 'warmed' | 'verified';
  epoch: number;
  leader_pid: number;
  leader_alive: boolean;
  waiters: number;
  warmups: number;
  takeovers: number;
  attempts: number;
  failures: number;
  invalidations: number;
  last_error: string;
  last_code: number;
  sqlstate: string;
  ready_age_ms: number | null;
  time_to_ready_ms: number | null;
  down_ms: number | null;
  /** What this host did in the last fleet warm-up (WL_PG_FLEET). */
  fleet: 'none' | 'led' | 'waited' | 'skipped' | 'local';
  /** The fleet leader's backend pid, client address and application_name, as the server
   * reports them. */
  fleet_leader_pid: number | null;
  fleet_leader_host: string;
  fleet_leader_app: string;
  wait_count: number;
  wait_sum_ms: number;
  wait_hist: HistBucket[];
}

export function pgEnsure(conninfo: string, opts?: EnsureOptions): Promise<Ready>;
export function invalidate(conninfo: string, epoch: number | bigint,
                           opts?: { shm?: string | null }): boolean;
export function status(opts?: { shm?: string | null }): SlotStatus[];
export function key(conninfo: string, opts?: { shm?: string | null; warmSql?: string | null }): string;
/** Warmlock's own check: the library's own connection (fail-fast), `sql` (default SELECT 1)
 * on it, closed. Rejects with pgEnsure's codes, 'ECONNREFUSED', 'ECONNRESET' or 'EIO'. */
export function pgCheck(conninfo: string,
                        opts?: { timeoutMs?: number; shm?: string | null; sql?: string }): Promise<void>;
export const version: string;
