-- The W3C traceparent of the request that created a message's transaction, set as the
-- message's `traceparent` property when it is published (empty: none).
ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
