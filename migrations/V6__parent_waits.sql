-- A record that failed because its parent was not linked keeps the parent
-- it waits for and the change that failed; once the parent is linked, the
-- change is re-queued to the record's owner (requeued_at says when).
ALTER TABLE extsync.failed_records
    ADD COLUMN IF NOT EXISTS parent_entity     text,
    ADD COLUMN IF NOT EXISTS parent_billing_id text,
    ADD COLUMN IF NOT EXISTS change            jsonb,
    ADD COLUMN IF NOT EXISTS requeued_at       timestamptz;
CREATE INDEX IF NOT EXISTS failed_records_waiting
    ON extsync.failed_records (integration, parent_entity, parent_billing_id)
    WHERE parent_entity IS NOT NULL AND requeued_at IS NULL;
