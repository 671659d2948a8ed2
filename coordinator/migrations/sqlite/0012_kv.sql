-- DTM's key-value table: topics (category 'topics', key = topic name, value = its
-- subscribers as a JSON array of {"url","remark"}). version counts changes, for optimistic
-- updates. Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS kv (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  cat TEXT NOT NULL,
  k TEXT NOT NULL,
  v TEXT NOT NULL,
  version INTEGER NOT NULL DEFAULT 1,
  create_time INTEGER NOT NULL,
  update_time INTEGER NOT NULL,
  UNIQUE (cat, k)
);
