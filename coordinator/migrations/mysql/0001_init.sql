-- Settle's store on MySQL / MariaDB. Times are milliseconds since the Unix epoch; statuses
-- and types are DTM's strings.
CREATE TABLE IF NOT EXISTS trans_global (
  id BIGINT NOT NULL AUTO_INCREMENT,
  gid VARCHAR(128) NOT NULL,
  trans_type VARCHAR(16) NOT NULL,
  status VARCHAR(16) NOT NULL,
  custom_data MEDIUMTEXT NOT NULL,
  steps MEDIUMTEXT NOT NULL,
  payloads MEDIUMTEXT NOT NULL,
  query_prepared VARCHAR(1024) NOT NULL,
  protocol VARCHAR(16) NOT NULL,
  options TEXT NOT NULL,
  rollback_reason VARCHAR(1024) NOT NULL DEFAULT '',
  create_time BIGINT NOT NULL,
  update_time BIGINT NOT NULL,
  finish_time BIGINT NULL,
  rollback_time BIGINT NULL,
  next_cron_time BIGINT NOT NULL,
  next_cron_interval BIGINT NOT NULL,
  owner VARCHAR(128) NOT NULL DEFAULT '',
  lease_token VARCHAR(64) NOT NULL DEFAULT '',
  lease_expire BIGINT NOT NULL DEFAULT 0,
  retry_count BIGINT NOT NULL DEFAULT 0,
  last_error VARCHAR(2048) NOT NULL DEFAULT '',
  PRIMARY KEY (id),
  UNIQUE KEY uniq_gid (gid),
  KEY idx_due (next_cron_time),
  KEY idx_lease_token (lease_token),
  KEY idx_create_time (create_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS trans_branch_op (
  id BIGINT NOT NULL AUTO_INCREMENT,
  gid VARCHAR(128) NOT NULL,
  branch_id VARCHAR(128) NOT NULL,
  op VARCHAR(16) NOT NULL,
  url VARCHAR(1024) NOT NULL,
  data MEDIUMTEXT NOT NULL,
  status VARCHAR(16) NOT NULL,
  create_time BIGINT NOT NULL,
  update_time BIGINT NOT NULL,
  finish_time BIGINT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uniq_branch_op (gid, branch_id, op)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
