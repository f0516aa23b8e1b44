-- What a conflict row needs beyond the values and the base: the external
-- field's name, the change times `latest_wins` compares, and how an open
-- `manual` conflict ended (`settled`: the sides agree or one side's change
-- flowed; `superseded`: a new value on either side made a new conflict).
ALTER TABLE extsync.conflicts
    ADD COLUMN IF NOT EXISTS external_field      text,
    ADD COLUMN IF NOT EXISTS alguna_changed_at   timestamptz,
    ADD COLUMN IF NOT EXISTS external_changed_at timestamptz,
    ADD COLUMN IF NOT EXISTS resolution          text;
CREATE INDEX IF NOT EXISTS conflicts_open_fields
    ON extsync.conflicts (integration, entity, billing_id, field)
    WHERE winner = 'manual' AND resolved_at IS NULL;
