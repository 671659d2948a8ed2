-- Indexes of the batched write path; see the MySQL migration.
CREATE INDEX IF NOT EXISTS idx_outbox_unsent ON outbox (status, sharding_key, seq);
CREATE INDEX IF NOT EXISTS idx_outbox_owner ON outbox (owner);
CREATE INDEX IF NOT EXISTS idx_finished ON trans_global (status, finish_time);
