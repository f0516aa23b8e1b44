-- Durable state of ingest: polling cursors and the last version emitted per
-- external record (collapses changes seen by webhooks, streams and polls).
CREATE TABLE IF NOT EXISTS extsync.poll_cursors (
    integration text        NOT NULL,
    object      text        NOT NULL,
    modified_at timestamptz NOT NULL,
    record_id   text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, object)
);

CREATE TABLE IF NOT EXISTS extsync.external_versions (
    integration text        NOT NULL,
    object      text        NOT NULL,
    record_id   text        NOT NULL,
    version     text        NOT NULL,
    modified_at timestamptz NOT NULL,
    emitted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, object, record_id)
);

CREATE TABLE IF NOT EXISTS extsync.stream_positions (
    integration text   NOT NULL,
    channel     text   NOT NULL,
    replay_id   bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, channel)
);
