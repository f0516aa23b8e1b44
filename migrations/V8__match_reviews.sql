-- External records whose match rules found several billing rows that fit
-- about as well: extsync links none of them and lists the record here with
-- its candidates until someone links it (e.g. by setting the billing row's
-- external id). `open_match_reviews` leaves out the records linked since.
CREATE TABLE IF NOT EXISTS extsync.match_reviews (
    integration   text        NOT NULL,
    entity        text        NOT NULL,
    external_id   text        NOT NULL,
    -- [{"billing_id": "...", "score": 0.93}, ...], best first
    candidates    jsonb       NOT NULL,
    fields        jsonb       NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration, entity, external_id)
);
CREATE OR REPLACE VIEW extsync.open_match_reviews AS
SELECT m.*
  FROM extsync.match_reviews m
 WHERE NOT EXISTS (SELECT 1 FROM extsync.records r
                    WHERE r.integration = m.integration AND r.entity = m.entity
                      AND r.external_id = m.external_id);
