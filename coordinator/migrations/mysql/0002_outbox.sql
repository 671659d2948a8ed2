-- Messages to deliver to brokers after their transaction committed, and the per-key
-- sequence that orders them. A message's sequence is taken in the transaction that commits
-- it, under the key's row lock, so for one key sequence order is commit order.
CREATE TABLE IF NOT EXISTS outbox (
  id BIGINT NOT NULL AUTO_INCREMENT,
  gid VARCHAR(128) NOT NULL,
  branch_id VARCHAR(128) NOT NULL,
  topic VARCHAR(255) NOT NULL,
  tag VARCHAR(128) NOT NULL,
  sharding_key VARCHAR(128) NOT NULL,
  seq BIGINT NULL,
  message_id VARCHAR(300) NOT NULL,
  body MEDIUMTEXT NOT NULL,
  status VARCHAR(16) NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 0,
  next_attempt_time BIGINT NOT NULL,
  last_error VARCHAR(2048) NOT NULL DEFAULT '',
  owner VARCHAR(128) NOT NULL DEFAULT '',
  lease_expire BIGINT NOT NULL DEFAULT 0,
  create_time BIGINT NOT NULL,
  sent_time BIGINT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uniq_step (gid, branch_id),
  UNIQUE KEY uniq_key_seq (sharding_key, seq),
  KEY idx_pending (status, next_attempt_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS outbox_key_seq (
  sharding_key VARCHAR(128) NOT NULL,
  last_seq BIGINT NOT NULL,
  PRIMARY KEY (sharding_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
