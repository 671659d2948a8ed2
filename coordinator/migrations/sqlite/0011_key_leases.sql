-- The dispatcher leases sharding keys, not messages; see the MySQL migration.
ALTER TABLE outbox_key_seq ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox_key_seq ADD COLUMN lease_expire INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS idx_outbox_pending;
UPDATE outbox SET owner = '', lease_expire = 0 WHERE sharding_key <> '' AND owner <> '';
UPDATE outbox_key_seq SET next_due = 0, wake = wake + 1;
