//! Applying a batch of planned billing writes in one transaction: all
//! pipelined at once, or, when a value is refused, one at a time under
//! savepoints so only that write fails.

use chrono::{DateTime, Utc};
use tokio_postgres::Statement;

use super::statement::Plan;
use super::{BillingError, STATEMENT_CACHE, Session, pg};
use crate::connectors::ErrorClass;
use crate::delivery::intent::{BillingWrite, DeliveryOutcome, OutcomeKind};

pub(super) async fn apply(
    session: &mut Session,
    writes: &[BillingWrite],
    plans: &[Plan],
) -> Result<Vec<DeliveryOutcome>, BillingError> {
    if session.statements.len() >= STATEMENT_CACHE {
        session.statements.clear();
    }
    for p in plans {
        for sql in [&p.update, &p.exists] {
            if !session.statements.contains_key(sql) {
                let st = session
                    .client
                    .prepare(sql)
                    .await
                    .map_err(pg("preparing a billing write"))?;
                session.statements.insert(sql.clone(), st);
            }
        }
    }
    match apply_pipelined(session, writes, plans).await? {
        Some(outcomes) => Ok(outcomes),
        None => apply_isolated(session, writes, plans).await,
    }
}

fn params(p: &Plan) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    p.params
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// Whether the key's row exists, for a write whose guarded update changed nothing.
async fn skipped_or_missing(
    tx: &tokio_postgres::Transaction<'_>,
    exists: &Statement,
    w: &BillingWrite,
    p: &Plan,
) -> Result<DeliveryOutcome, BillingError> {
    let all = params(p);
    let found = tx
        .query(exists, &all[all.len() - w.key.len()..])
        .await
        .map_err(pg("checking a row's existence"))?;
    Ok(if found.is_empty() {
        outcome(
            p,
            OutcomeKind::Failed,
            None,
            Some((
                ErrorClass::NotFound,
                format!("{}: no row with this key", w.table),
            )),
        )
    } else {
        outcome(p, OutcomeKind::Skipped, None, None)
    })
}

/// The common case: every update sent at once (pipelined on the
/// connection), one round trip for the batch. `None` when a value was
/// refused: the transaction is rolled back and the batch goes through
/// [`apply_isolated`] instead.
async fn apply_pipelined(
    session: &mut Session,
    writes: &[BillingWrite],
    plans: &[Plan],
) -> Result<Option<Vec<DeliveryOutcome>>, BillingError> {
    let tx = session
        .client
        .transaction()
        .await
        .map_err(pg("starting the transaction"))?;
    let all_params: Vec<_> = plans.iter().map(params).collect();
    let answers = futures::future::join_all(
        plans
            .iter()
            .zip(&all_params)
            .map(|(p, ps)| tx.query(&session.statements[&p.update], ps)),
    )
    .await;
    let mut updated = Vec::with_capacity(plans.len());
    for answer in answers {
        match answer {
            Ok(rows) => updated.push(!rows.is_empty()),
            Err(e) if is_value_error(&e) => {
                tx.rollback()
                    .await
                    .map_err(pg("rolling back a refused batch"))?;
                return Ok(None);
            }
            Err(e) => return Err(pg("applying a billing write")(e)),
        }
    }
    let mut outcomes = Vec::with_capacity(plans.len());
    for ((w, p), updated) in writes.iter().zip(plans).zip(updated) {
        outcomes.push(if updated {
            outcome(p, OutcomeKind::Updated, Some(w.as_of), None)
        } else {
            skipped_or_missing(&tx, &session.statements[&p.exists], w, p).await?
        });
    }
    tx.commit().await.map_err(pg("committing"))?;
    Ok(Some(outcomes))
}

/// One write at a time, each under a savepoint, so a refused value fails
/// only its own write.
async fn apply_isolated(
    session: &mut Session,
    writes: &[BillingWrite],
    plans: &[Plan],
) -> Result<Vec<DeliveryOutcome>, BillingError> {
    let tx = session
        .client
        .transaction()
        .await
        .map_err(pg("starting the transaction"))?;
    let mut outcomes = Vec::with_capacity(plans.len());
    for (w, p) in writes.iter().zip(plans) {
        let update = &session.statements[&p.update];
        let params = params(p);
        tx.batch_execute("SAVEPOINT extsync_write")
            .await
            .map_err(pg("setting a savepoint"))?;
        let outcome = match tx.query(update, &params).await {
            Ok(rows) if !rows.is_empty() => outcome(p, OutcomeKind::Updated, Some(w.as_of), None),
            Ok(_) => skipped_or_missing(&tx, &session.statements[&p.exists], w, p).await?,
            Err(e) if is_value_error(&e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT extsync_write")
                    .await
                    .map_err(pg("rolling back a refused write"))?;
                let message = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                outcome(
                    p,
                    OutcomeKind::Failed,
                    None,
                    Some((
                        ErrorClass::FieldValidation,
                        format!("{}: {message}", w.table),
                    )),
                )
            }
            Err(e) => return Err(pg("applying a billing write")(e)),
        };
        tx.batch_execute("RELEASE SAVEPOINT extsync_write")
            .await
            .map_err(pg("releasing a savepoint"))?;
        outcomes.push(outcome);
    }
    tx.commit().await.map_err(pg("committing"))?;
    Ok(outcomes)
}

/// Data exceptions (class 22) and integrity violations (class 23): the
/// value, not the database, is at fault.
fn is_value_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

fn outcome(
    p: &Plan,
    kind: OutcomeKind,
    version: Option<DateTime<Utc>>,
    error: Option<(ErrorClass, String)>,
) -> DeliveryOutcome {
    DeliveryOutcome {
        billing_id: p.billing_id.clone(),
        kind,
        external_id: None,
        version: version.map(|v| v.to_rfc3339()),
        error,
    }
}
