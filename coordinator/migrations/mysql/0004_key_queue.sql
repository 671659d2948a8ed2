-- Each sharding key says when a dispatcher should next look at it, so that a claim reads
-- only the keys that may have something to deliver, never the whole backlog. `next_due` is
-- moved earlier by every change that can let a key's next message go (a message committed,
-- acknowledged, released or dropped), each such change also counting `wake`; a dispatcher
-- that found nothing to send puts the key to sleep only if no wake came since it looked.
-- Keys that exist already are due at once.
ALTER TABLE outbox_key_seq
  ADD COLUMN next_due BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN wake BIGINT NOT NULL DEFAULT 0,
  ADD INDEX idx_key_due (next_due);
