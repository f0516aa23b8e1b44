-- Whether each integration's writes flow, for the control plane to read:
-- `active`, or `auth_expired` once the vendor refused its credentials after a
-- refresh (writes paused, nothing dropped). `since` is when the status began;
-- `message` and `error_code` are the vendor's own.
CREATE TABLE IF NOT EXISTS extsync.integration_status (
    integration text        PRIMARY KEY,
    status      text        NOT NULL,
    since       timestamptz NOT NULL,
    message     text,
    error_code  text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
