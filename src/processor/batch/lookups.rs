//! The reads a batch makes of Postgres beside the processor's state: billing
//! rows to merge with or match, the external index of unlinked records,
//! match reviews, and parents' links.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::super::change::{BillingChange, Change};
use super::super::link::{self, MatchResult};
use super::super::mapping::EntityMap;
use super::super::record;
use super::super::route::billing_key;
use super::super::state::{RecordKey, RecordState};
use super::{Candidates, MATCH_CANDIDATES, PrimaryKey, Processor, Views, Work};
use crate::ingest::ExternalChange;
use crate::sql::{quote_ident, quote_table};

impl Processor {
    /// Links an unlinked external record to a billing row by the entity's
    /// match rules; otherwise remembers it for billing records to match later.
    pub(super) async fn link_external(
        &self,
        e: &EntityMap,
        x: &ExternalChange,
    ) -> Result<MatchResult, tokio_postgres::Error> {
        let mut found = MatchResult::NoMatch;
        if let (Some(rule), Some(after)) = (&e.matching, &x.after) {
            let wanted = link::external_values_of(e, rule, after);
            let rows = self.unlinked_billing_rows(e).await?;
            let cands: Vec<(String, Vec<Option<String>>)> = rows
                .iter()
                .map(|(id, view)| (id.clone(), link::values_of(view, rule.fields.iter())))
                .collect();
            found = link::best_match(rule, &wanted, &cands);
        }
        match &found {
            MatchResult::Linked(_) => return Ok(found),
            MatchResult::Ambiguous(cands) => self.list_for_review(e, x, cands).await?,
            MatchResult::NoMatch => {}
        }
        if let Some(after) = &x.after {
            self.billing
                .client()
                .await?
                .execute(
                    "INSERT INTO extsync.external_index (integration, entity, external_id, fields, modified_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (integration, entity, external_id) DO UPDATE
                        SET fields = excluded.fields, modified_at = excluded.modified_at",
                    &[&e.integration, &e.entity, &x.external_id, &Value::Object(after.clone()), &x.modified_at],
                )
                .await?;
        }
        Ok(found)
    }

    /// Lists an external record that fits several billing rows in
    /// `extsync.match_reviews`, with its candidates, until it is linked.
    async fn list_for_review(
        &self,
        e: &EntityMap,
        x: &ExternalChange,
        cands: &[(String, f64)],
    ) -> Result<(), tokio_postgres::Error> {
        let candidates: Vec<Value> = cands
            .iter()
            .map(|(id, score)| serde_json::json!({ "billing_id": id, "score": score }))
            .collect();
        let fields = Value::Object(x.after.clone().unwrap_or_default());
        self.billing
            .client()
            .await?
            .execute(
                "INSERT INTO extsync.match_reviews (integration, entity, external_id, candidates, fields)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (integration, entity, external_id) DO UPDATE
                    SET candidates = excluded.candidates, fields = excluded.fields, last_seen_at = now()",
                &[&e.integration, &e.entity, &x.external_id, &Value::Array(candidates), &fields],
            )
            .await?;
        Ok(())
    }

    /// Billing rows of the entity's table not yet linked for its integration.
    async fn unlinked_billing_rows(
        &self,
        e: &EntityMap,
    ) -> Result<Candidates, tokio_postgres::Error> {
        self.state.settled().await;
        let pk = self.primary_key(e).await?.column;
        let sql = format!(
            "SELECT t.{pk}::text, to_jsonb(t) FROM {table} t
              WHERE NOT EXISTS (SELECT 1 FROM extsync.records r WHERE r.integration = $1 AND r.entity = $2
                                   AND r.billing_id = t.{pk}::text AND r.external_id IS NOT NULL)
              LIMIT {MATCH_CANDIDATES}",
            table = quoted_table(e)
        );
        let rows = self
            .billing
            .client()
            .await?
            .query(&sql, &[&e.integration, &e.entity])
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let row: Value = r.get(1);
                (
                    r.get(0),
                    row.as_object()
                        .map(record::billing_view)
                        .unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Unlinked external records of the entity, for match rules.
    pub(super) async fn candidates(
        &self,
        e: &EntityMap,
    ) -> Result<Candidates, tokio_postgres::Error> {
        self.state.settled().await;
        let rows = self
            .billing
            .client()
            .await?
            .query(
                "SELECT i.external_id, i.fields FROM extsync.external_index i
                  WHERE i.integration = $1 AND i.entity = $2
                    AND NOT EXISTS (SELECT 1 FROM extsync.records r WHERE r.integration = i.integration
                                      AND r.entity = i.entity AND r.external_id = i.external_id)
                  LIMIT $3",
                &[&e.integration, &e.entity, &MATCH_CANDIDATES],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let v: Value = r.get(1);
                (r.get(0), v.as_object().cloned().unwrap_or_default())
            })
            .collect())
    }

    /// Current billing rows of records that external changes will merge with.
    pub(super) async fn load_views(
        &self,
        work: &[Work<'_>],
    ) -> Result<Views, tokio_postgres::Error> {
        let mut wanted: BTreeMap<String, (&EntityMap, Vec<String>)> = BTreeMap::new();
        for w in work {
            if let (Change::External(_), Some(k)) = (w.change, &w.key) {
                wanted
                    .entry(w.entity.table.to_string())
                    .or_insert((w.entity, Vec::new()))
                    .1
                    .push(k.billing_id.clone());
            }
        }
        let mut out = HashMap::new();
        for (table, (e, ids)) in wanted {
            let PrimaryKey {
                column: pk,
                sql_type,
            } = self.primary_key(e).await?;
            let sql = format!(
                "SELECT t.{pk}::text, to_jsonb(t) FROM {} t WHERE t.{pk} = ANY($1::text[]::{sql_type}[])",
                quoted_table(e)
            );
            for r in self.reads.client().await?.query(&sql, &[&ids]).await? {
                let row: Value = r.get(1);
                out.insert(
                    (table.clone(), r.get::<_, String>(0)),
                    row.as_object()
                        .map(record::billing_view)
                        .unwrap_or_default(),
                );
            }
        }
        Ok(out)
    }

    /// The single primary-key column of the entity's table.
    async fn primary_key(&self, e: &EntityMap) -> Result<PrimaryKey, tokio_postgres::Error> {
        let table = e.table.to_string();
        if let Some(pk) = self.primary_keys.get(&table) {
            return Ok(pk.clone());
        }
        let row = self
            .billing
            .client()
            .await?
            .query_opt(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                  WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND i.indisprimary
                  LIMIT 1",
                &[&e.table.schema(), &e.table.table()],
            )
            .await?;
        let (column, sql_type): (String, String) = row
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or_else(|| ("id".into(), "text".into()));
        let pk = PrimaryKey {
            column: quote_ident(&column),
            sql_type,
        };
        self.primary_keys.insert(table, pk.clone());
        Ok(pk)
    }

    /// The parent's external id, when the entity has a parent and the row
    /// references one that is linked.
    pub(super) async fn parent_external_id(
        &self,
        e: &EntityMap,
        b: &BillingChange,
        states: &HashMap<RecordKey, RecordState>,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let (Some(p), Some(row)) = (&e.parent, &b.after) else {
            return Ok(None);
        };
        let Some(parent_id) = row.get(&p.alguna).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }) else {
            return Ok(None);
        };
        let key = RecordKey {
            integration: e.integration.clone(),
            entity: p.entity.to_string(),
            billing_id: parent_id,
        };
        if let Some(ext) = states.get(&key).and_then(|s| s.external_id.clone()) {
            return Ok(Some(ext));
        }
        Ok(self
            .state
            .load_many(std::slice::from_ref(&key))
            .await?
            .remove(0)
            .external_id)
    }

    /// Waits (bounded) for the parent to be linked: by this processor (its
    /// state in memory, saved or not: an earlier batch, or a part running
    /// beside this one, looked at whenever a part's states are remembered)
    /// or by another owner (in Postgres, looked at every 200 ms). Stops
    /// waiting as soon as a change of the parent is queued on one of the
    /// partitions the batch `holds`: it starts only after the batch (see
    /// [`super::super::queued`]).
    pub(super) async fn wait_for_parent(
        &self,
        key: &RecordKey,
        holds: &[i32],
    ) -> Result<ParentLink, tokio_postgres::Error> {
        let deadline = tokio::time::Instant::now() + self.parent_wait;
        let routed = (self.mappings.for_external(&key.integration, &key.entity))
            .map(|p| billing_key(p.table.schema(), p.table.table(), &key.billing_id));
        let mut changes = self.state.changes();
        let mut additions = self.queued.additions();
        let mut next_look = tokio::time::Instant::now();
        loop {
            if let Some(linked) = self.state.known(key).await
                && let Some(ext) = &linked.external_id
            {
                return Ok(ParentLink::Linked(ext.clone()));
            }
            if routed
                .as_deref()
                .is_some_and(|k| self.queued.waits_on(k, holds))
            {
                return Ok(ParentLink::Queued);
            }
            let now = tokio::time::Instant::now();
            if now >= next_look {
                let row = self
                    .billing
                    .client()
                    .await?
                    .query_opt(
                        "SELECT external_id FROM extsync.records WHERE integration = $1 AND entity = $2 AND billing_id = $3 AND external_id IS NOT NULL",
                        &[&key.integration, &key.entity, &key.billing_id],
                    )
                    .await?;
                if let Some(r) = row {
                    return Ok(ParentLink::Linked(r.get(0)));
                }
                next_look = now + Duration::from_millis(200);
            }
            if now >= deadline {
                return Ok(ParentLink::NotLinked);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = additions.changed() => {}
                _ = tokio::time::sleep_until(next_look.min(deadline)) => {}
            }
        }
    }
}

/// What waiting for a parent's link came to.
#[derive(Debug, PartialEq)]
pub(super) enum ParentLink {
    /// Linked, to this external id.
    Linked(String),
    /// A change of the parent is queued behind the batch.
    Queued,
    /// Not linked within the wait.
    NotLinked,
}

fn quoted_table(e: &EntityMap) -> String {
    quote_table(e.table.schema(), e.table.table())
}
