-- Settle's embedded store on SQLite. Same columns and meaning as the MySQL schema.
CREATE TABLE IF NOT EXISTS trans_global (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid TEXT NOT NULL UNIQUE,
  trans_type TEXT NOT NULL,
  status TEXT NOT NULL,
  custom_data TEXT NOT NULL,
  steps TEXT NOT NULL,
  payloads TEXT NOT NULL,
  query_prepared TEXT NOT NULL,
  protocol TEXT NOT NULL,
  options TEXT NOT NULL,
  rollback_reason TEXT NOT NULL DEFAULT '',
  create_time INTEGER NOT NULL,
  update_time INTEGER NOT NULL,
  finish_time INTEGER NULL,
  rollback_time INTEGER NULL,
  next_cron_time INTEGER NOT NULL,
  next_cron_interval INTEGER NOT NULL,
  owner TEXT NOT NULL DEFAULT '',
  lease_token TEXT NOT NULL DEFAULT '',
  lease_expire INTEGER NOT NULL DEFAULT 0,
  retry_count INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idx_due ON trans_global (next_cron_time);
CREATE INDEX IF NOT EXISTS idx_lease_token ON trans_global (lease_token);
CREATE INDEX IF NOT EXISTS idx_create_time ON trans_global (create_time);

CREATE TABLE IF NOT EXISTS trans_branch_op (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid TEXT NOT NULL,
  branch_id TEXT NOT NULL,
  op TEXT NOT NULL,
  url TEXT NOT NULL,
  data TEXT NOT NULL,
  status TEXT NOT NULL,
  create_time INTEGER NOT NULL,
  update_time INTEGER NOT NULL,
  finish_time INTEGER NULL,
  UNIQUE (gid, branch_id, op)
);
