-- Messages to deliver to brokers after their transaction committed; see the MySQL schema.
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid TEXT NOT NULL,
  branch_id TEXT NOT NULL,
  topic TEXT NOT NULL,
  tag TEXT NOT NULL,
  sharding_key TEXT NOT NULL,
  seq INTEGER NULL,
  message_id TEXT NOT NULL,
  body TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_time INTEGER NOT NULL,
  last_error TEXT NOT NULL DEFAULT '',
  owner TEXT NOT NULL DEFAULT '',
  lease_expire INTEGER NOT NULL DEFAULT 0,
  create_time INTEGER NOT NULL,
  sent_time INTEGER NULL,
  UNIQUE (gid, branch_id),
  UNIQUE (sharding_key, seq)
);
CREATE INDEX IF NOT EXISTS idx_outbox_pending ON outbox (status, next_attempt_time);

CREATE TABLE IF NOT EXISTS outbox_key_seq (
  sharding_key TEXT PRIMARY KEY,
  last_seq INTEGER NOT NULL
);
