-- Alerts sent to the operators' webhook: one row per transaction while its alert is open,
-- shared by every instance so that each transaction fires once, then resolves once. A row
-- holds the events still to deliver and is deleted once "resolved" was delivered.
CREATE TABLE IF NOT EXISTS settle_alert (
  gid VARCHAR(128) NOT NULL,
  fired_time BIGINT NOT NULL,
  firing_body TEXT NOT NULL,
  firing_sent TINYINT NOT NULL DEFAULT 0,
  resolved_body TEXT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  next_try BIGINT NOT NULL,
  last_error VARCHAR(1024) NOT NULL DEFAULT '',
  PRIMARY KEY (gid),
  KEY idx_alert_next_try (next_try)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
