-- The dispatcher leases sharding keys, not messages: a key's row says which claim may
-- publish the key's messages, and until when. A message's row is written again only when
-- it is acknowledged (or fails); a message without a key keeps its own lease on its row.
-- `idx_pending` is dropped: a claim finds unsent messages through `idx_unsent`, whose first
-- column is the status, and an index less is a write less for every message.
ALTER TABLE outbox_key_seq
  ADD COLUMN owner VARCHAR(128) NOT NULL DEFAULT '',
  ADD COLUMN lease_expire BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox DROP INDEX idx_pending;
-- Claims made before: keyed messages are free again, and every key is looked at at once.
UPDATE outbox SET owner = '', lease_expire = 0 WHERE sharding_key <> '' AND owner <> '';
UPDATE outbox_key_seq SET next_due = 0, wake = wake + 1;
