-- When extsync last wrote each billing field of a record: a captured change
-- committed before that write carries a stale value for the field.
ALTER TABLE extsync.records ADD COLUMN IF NOT EXISTS billing_written jsonb NOT NULL DEFAULT '{}';
-- The same for each external field extsync wrote, against stale external events.
ALTER TABLE extsync.records ADD COLUMN IF NOT EXISTS external_written jsonb NOT NULL DEFAULT '{}';
