-- A create of the record was sent: it may have landed even when extsync
-- stopped before recording the answer, so the next attempt looks the record
-- up by its billing id before creating it again.
ALTER TABLE extsync.records ADD COLUMN IF NOT EXISTS create_sent boolean NOT NULL DEFAULT false;
