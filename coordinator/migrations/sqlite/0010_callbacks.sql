-- Completion callbacks: a finished transaction whose options name a callback_url is posted
-- there. callback_due is when it is next to be posted (NULL: nothing to post), the others
-- record the deliveries tried.
ALTER TABLE trans_global ADD COLUMN callback_due INTEGER NULL;
ALTER TABLE trans_global ADD COLUMN callback_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trans_global ADD COLUMN callback_time INTEGER NULL;
ALTER TABLE trans_global ADD COLUMN callback_error TEXT NOT NULL DEFAULT '';
CREATE INDEX idx_trans_global_callback_due ON trans_global (callback_due) WHERE callback_due IS NOT NULL;
