-- Alerts sent to the operators' webhook: one row per transaction while its alert is open,
-- shared by every instance so that each transaction fires once, then resolves once. A row
-- holds the events still to deliver and is deleted once "resolved" was delivered.
CREATE TABLE IF NOT EXISTS settle_alert (
  gid TEXT PRIMARY KEY,
  fired_time INTEGER NOT NULL,
  firing_body TEXT NOT NULL,
  firing_sent INTEGER NOT NULL DEFAULT 0,
  resolved_body TEXT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_try INTEGER NOT NULL,
  last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idx_alert_next_try ON settle_alert (next_try);
