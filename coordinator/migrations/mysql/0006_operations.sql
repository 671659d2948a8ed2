-- What operators see. `trans_attempt`: one row per round of phase 2 (or check-back) that did
-- not settle its transaction, its timeline; deleted with the transaction. `settle_instance`:
-- each coordinator sharing this database, written by the instance every few seconds.
CREATE TABLE IF NOT EXISTS trans_attempt (
  id BIGINT NOT NULL AUTO_INCREMENT,
  gid VARCHAR(128) NOT NULL,
  at_time BIGINT NOT NULL,
  round BIGINT NOT NULL,
  error VARCHAR(2048) NOT NULL,
  next_retry BIGINT NOT NULL,
  PRIMARY KEY (id),
  KEY idx_attempt_gid (gid, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS settle_instance (
  id VARCHAR(128) NOT NULL,
  address VARCHAR(255) NOT NULL,
  version VARCHAR(64) NOT NULL,
  started_time BIGINT NOT NULL,
  seen_time BIGINT NOT NULL,
  PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
