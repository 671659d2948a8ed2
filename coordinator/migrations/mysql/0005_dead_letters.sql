-- Permanent refusals of a message (the broker refuses the message itself: empty, too large,
-- malformed). After `dead_letter_after` of them a message's status becomes 'dead': kept for
-- an operator to redrive, out of its key's way.
ALTER TABLE outbox ADD COLUMN refusals BIGINT NOT NULL DEFAULT 0;
