-- Indexes of the batched write path: the dispatcher finds each key's next unsent message
-- without scanning sent ones, and its claims by owner; retention finds finished
-- transactions by their finish time.
ALTER TABLE outbox
  ADD INDEX idx_unsent (status, sharding_key, seq),
  ADD INDEX idx_owner (owner);
ALTER TABLE trans_global
  ADD INDEX idx_finished (status, finish_time);
