// PM2: `pm2 start ecosystem.config.js`. PM2 is the cluster primary here; each instance
// awaits pgEnsure, listens, and only then sends `ready` (wait_ready), so a reload replaces
// old instances only with new ones that are connected. listen_timeout covers pgEnsure's
// 60 s deadline: an instance that cannot get PostgreSQL ready exits and PM2 restarts it.
module.exports = {
  apps: [
    {
      name: 'api',
      script: './cluster-server.js',
      cwd: __dirname,
      exec_mode: 'cluster',
      instances: 'max',
      wait_ready: true,
      listen_timeout: 65000,
      kill_timeout: 5000,
      exp_backoff_restart_delay: 200,
      env: {
        DATABASE_URL: 'postgresql:///app?host=/run/postgresql',
        PORT: 3000,
        // Every instance must share one segment: the default is per user, so this only
        // matters when instances run as different users or in containers (mount /dev/shm).
        // WARMLOCK_SHM: '/warmlock.api',
      },
    },
  ],
};
