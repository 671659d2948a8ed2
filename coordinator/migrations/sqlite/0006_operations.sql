-- What operators see. `trans_attempt`: one row per round of phase 2 (or check-back) that did
-- not settle its transaction, its timeline; deleted with the transaction. `settle_instance`:
-- each coordinator sharing this database, written by the instance every few seconds.
CREATE TABLE IF NOT EXISTS trans_attempt (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid TEXT NOT NULL,
  at_time INTEGER NOT NULL,
  round INTEGER NOT NULL,
  error TEXT NOT NULL,
  next_retry INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_attempt_gid ON trans_attempt (gid, id);

CREATE TABLE IF NOT EXISTS settle_instance (
  id TEXT PRIMARY KEY,
  address TEXT NOT NULL,
  version TEXT NOT NULL,
  started_time INTEGER NOT NULL,
  seen_time INTEGER NOT NULL
);
