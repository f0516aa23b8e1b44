//! The external writer's calls to its connector: each within the
//! integration's rate budget, retried with backoff for `transient` and
//! `rate_limit`, authenticated again once on `auth_expired`, and split in
//! halves when a batch is refused as a whole.

use std::collections::VecDeque;
use std::time::Instant;

use super::{ExternalWriter, Interruption, Stop};
use crate::connectors::{ConnectorError, ErrorClass, ExternalRecord, WriteOp, WriteOutcome};
use crate::delivery::metrics;
use crate::delivery::retry::Attempts;

impl ExternalWriter {
    /// [`Self::send`] of owned operations.
    pub(super) async fn send_owned(
        &self,
        object: &str,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, Stop> {
        self.send(object, &ops).await
    }

    /// Sends `ops` until each has a final answer. Retryable failures of the
    /// whole call or of single operations are retried; a call that failed
    /// as a whole for a reason that cannot pass is split in halves until the
    /// operation at fault is alone, so the others still go through.
    async fn send(
        &self,
        object: &str,
        ops: &[WriteOp],
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, Stop> {
        let mut results: Vec<Option<Result<WriteOutcome, ConnectorError>>> =
            (0..ops.len()).map(|_| None).collect();
        let mut queue: VecDeque<Vec<usize>> = VecDeque::from([(0..ops.len()).collect()]);
        let mut attempts = Attempts::start();
        let mut reauthenticated = false;
        while let Some(idx) = queue.pop_front() {
            let batch: Vec<WriteOp> = idx.iter().map(|&i| ops[i].clone()).collect();
            match self.call(object, batch).await {
                Ok(answers) => {
                    let mut again = Vec::new();
                    let mut worst: Option<ConnectorError> = None;
                    for (&i, answer) in idx.iter().zip(answers) {
                        match answer {
                            Err(e) if e.retryable() => {
                                again.push(i);
                                worst = Some(match worst {
                                    Some(w) if w.retry_after >= e.retry_after => w,
                                    _ => e,
                                });
                            }
                            other => results[i] = Some(other),
                        }
                    }
                    if let Some(e) = worst {
                        if again.len() < idx.len() && e.class != ErrorClass::AuthExpired {
                            reauthenticated = false;
                        }
                        self.before_retry(e, &mut attempts, &mut reauthenticated)
                            .await?;
                        queue.push_front(again);
                    } else {
                        reauthenticated = false;
                    }
                }
                Err(e) if e.retryable() => {
                    self.before_retry(e, &mut attempts, &mut reauthenticated)
                        .await?;
                    queue.push_front(idx);
                }
                Err(e) if idx.len() > 1 => {
                    tracing::debug!(
                        integration = %self.integration,
                        object,
                        size = idx.len(),
                        error_type = e.class.as_str(),
                        "batch refused as a whole; splitting it"
                    );
                    let (a, b) = idx.split_at(idx.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Err(e) => results[idx[0]] = Some(Err(e)),
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every operation answered"))
            .collect())
    }

    /// Records of `object` whose unique `field` holds one of `billing_ids`
    /// (a create that landed before a crash carries its billing id).
    pub async fn existing(
        &self,
        object: &str,
        field: &str,
        billing_ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        self.reading(|| self.connector.find_by_field(object, field, billing_ids))
            .await
    }

    /// The records of `object` with these ids as they are now; records that
    /// no longer exist are left out.
    pub async fn current(
        &self,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<ExternalRecord>, ConnectorError> {
        self.reading(|| self.connector.read_many(object, ids)).await
    }

    /// One read, within the rate budget, retried like writes.
    async fn reading<'a, F, Fut>(&'a self, read: F) -> Result<Vec<ExternalRecord>, ConnectorError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<ExternalRecord>, ConnectorError>> + 'a,
    {
        let mut attempts = Attempts::start();
        let mut reauthenticated = false;
        loop {
            if let Some(b) = &self.budget {
                b.acquire().await;
            }
            match read().await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    if let Err(stop) = self
                        .before_retry(e, &mut attempts, &mut reauthenticated)
                        .await
                    {
                        return Err(stop.error);
                    }
                }
            }
        }
    }

    /// One batch call: budget, connector, metrics. A connector that answers
    /// a different number of results than it was given is treated as a
    /// transient failure of the whole call.
    async fn call(
        &self,
        object: &str,
        batch: Vec<WriteOp>,
    ) -> Result<Vec<Result<WriteOutcome, ConnectorError>>, ConnectorError> {
        if let Some(b) = &self.budget {
            b.acquire().await;
        }
        let n = batch.len();
        let started = Instant::now();
        let answer = self.connector.write_batch(object, batch).await;
        ::metrics::counter!(metrics::CALLS_TOTAL,
            "integration" => self.integration.clone(),
            "object" => object.to_string())
        .increment(1);
        ::metrics::histogram!(metrics::CALL_DURATION_SECONDS,
            "integration" => self.integration.clone())
        .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(r) if r.len() != n => Err(ConnectorError::new(
                ErrorClass::Transient,
                format!(
                    "the connector answered {} results for {n} operations",
                    r.len()
                ),
            )),
            other => other,
        }
    }

    /// Waits before retrying after `e`, or stops the batch.
    async fn before_retry(
        &self,
        e: ConnectorError,
        attempts: &mut Attempts,
        reauthenticated: &mut bool,
    ) -> Result<(), Stop> {
        if e.class == ErrorClass::AuthExpired {
            if *reauthenticated {
                return Err(self.pause(e).await);
            }
            *reauthenticated = true;
            tracing::info!(integration = %self.integration, "credentials refused; authenticating again");
            return match self.connector.authenticate().await {
                Ok(()) => Ok(()),
                Err(auth) => Err(self.pause(auth).await),
            };
        }
        let Some(delay) = attempts.next_delay(&self.config.retry, e.retry_after) else {
            return Err(Stop {
                reason: Interruption::RetriesExhausted,
                error: e,
            });
        };
        ::metrics::counter!(metrics::RETRIES_TOTAL,
            "integration" => self.integration.clone(),
            "error_type" => e.class.as_str())
        .increment(1);
        tracing::debug!(
            integration = %self.integration,
            error_type = e.class.as_str(),
            delay_ms = delay.as_millis() as u64,
            "retrying batch"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }
}
