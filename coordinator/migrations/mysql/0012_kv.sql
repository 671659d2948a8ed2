-- DTM's key-value table: topics (category 'topics', key = topic name, value = its
-- subscribers as a JSON array of {"url","remark"}). version counts changes, for optimistic
-- updates. Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS kv (
  id BIGINT NOT NULL AUTO_INCREMENT,
  cat VARCHAR(45) NOT NULL,
  k VARCHAR(128) NOT NULL,
  v MEDIUMTEXT NOT NULL,
  version BIGINT NOT NULL DEFAULT 1,
  create_time BIGINT NOT NULL,
  update_time BIGINT NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uniq_kv (cat, k)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
