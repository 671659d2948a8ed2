-- When a transaction was submitted (committed), ms since the Unix epoch; NULL before, and
-- for one never submitted. Time from submit to settled is measured from it.
ALTER TABLE trans_global ADD COLUMN submit_time INTEGER NULL;
