-- Durable state of the processor: per billing record and integration, the
-- link to the external record and the last synced values (the merge base).
CREATE TABLE IF NOT EXISTS extsync.records (
    integration         text        NOT NULL,
    entity              text        NOT NULL,
    billing_id          text        NOT NULL,
    external_id         text,
    base                jsonb       NOT NULL DEFAULT '{"alguna": {}, "external": {}}',
    -- Latest known external image (mapped external fields) and its version.
    external_image      jsonb       NOT NULL DEFAULT '{}',
    external_version    text,
    -- Hash of the external fields extsync last wrote, to recognise echoes.
    written_hash        text,
    billing_changed_at  timestamptz,
    external_changed_at timestamptz,
    deleted             boolean     NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, entity, billing_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS records_external_id
    ON extsync.records (integration, entity, external_id) WHERE external_id IS NOT NULL;

-- External records seen by the processor that are not linked yet, for
-- matching billing records to them.
CREATE TABLE IF NOT EXISTS extsync.external_index (
    integration text        NOT NULL,
    entity      text        NOT NULL,
    external_id text        NOT NULL,
    fields      jsonb       NOT NULL,
    modified_at timestamptz NOT NULL,
    PRIMARY KEY (integration, entity, external_id)
);

-- Conflicts: every resolution, and manual ones waiting for a person.
CREATE TABLE IF NOT EXISTS extsync.conflicts (
    id             bigserial   PRIMARY KEY,
    integration    text        NOT NULL,
    entity         text        NOT NULL,
    billing_id     text        NOT NULL,
    external_id    text,
    field          text        NOT NULL,
    strategy       text        NOT NULL,
    winner         text        NOT NULL,
    alguna_value   jsonb,
    external_value jsonb,
    base_alguna    jsonb,
    base_external  jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz
);
CREATE INDEX IF NOT EXISTS conflicts_open ON extsync.conflicts (integration, entity) WHERE winner = 'manual' AND resolved_at IS NULL;

-- Per integration and entity counters, and the records that failed.
CREATE TABLE IF NOT EXISTS extsync.sync_counters (
    integration text   NOT NULL,
    entity      text   NOT NULL,
    synced      bigint NOT NULL DEFAULT 0,
    created     bigint NOT NULL DEFAULT 0,
    updated     bigint NOT NULL DEFAULT 0,
    conflicts   bigint NOT NULL DEFAULT 0,
    errors      bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, entity)
);

CREATE TABLE IF NOT EXISTS extsync.failed_records (
    integration     text        NOT NULL,
    entity          text        NOT NULL,
    billing_id      text        NOT NULL,
    external_id     text,
    error_type      text        NOT NULL,
    message         text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, entity, billing_id)
);
