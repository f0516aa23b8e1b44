//! Outgoing webhooks as HubSpot sends them: every write becomes events
//! (`contact.creation`, `contact.propertyChange`, `contact.deletion`, and the
//! same for companies and deals), POSTed in JSON arrays of up to 100 to the
//! configured URL, signed with `X-HubSpot-Signature-v3` and
//! `X-HubSpot-Request-Timestamp`, retried up to 10 times with backoff on 5xx,
//! timeouts and connection errors, and never after a 4xx. An admin switch
//! drops events instead (for loss tests).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};

use super::oauth::Caller;
use super::store::{Applied, ChangeKind};

/// Events in one POST, at most.
pub const MAX_BATCH: usize = 100;
/// Retries after the first attempt.
pub const MAX_RETRIES: u32 = 10;
/// Events waiting for delivery, at most; more are counted as overflowed.
const QUEUE: usize = 100_000;
/// How long the dispatcher waits for more events to fill a batch.
const LINGER: Duration = Duration::from_millis(5);
/// Delivery attempts kept for `/__admin/webhooks`.
const LOG_CAP: usize = 10_000;

/// Webhook settings, changed through `/__admin/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSettings {
    /// Where to POST; nothing is sent while unset.
    pub target_url: Option<String>,
    /// Signing key (the app's client secret by default).
    pub client_secret: String,
    /// Drop every event instead of sending it.
    pub drop: bool,
    pub max_batch: usize,
    pub max_retries: u32,
    /// First retry delay; doubles on each retry (HubSpot spreads retries over 24 h).
    pub retry_base_ms: u64,
    pub timeout_ms: u64,
    /// Concurrent POSTs.
    pub concurrency: usize,
    /// Subscription types sent (`contact.creation`, …); all when absent.
    pub subscriptions: Option<Vec<String>>,
}

/// The fields of `/__admin/webhooks` input; absent ones are left as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookPatch {
    #[serde(default)]
    pub target_url: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub drop: Option<bool>,
    #[serde(default)]
    pub max_batch: Option<usize>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub retry_base_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub subscriptions: Option<Vec<String>>,
}

/// One delivery attempt, as `/__admin/webhooks` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub event_ids: Vec<u64>,
    pub attempt_number: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub delivered: bool,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStats {
    pub published: u64,
    pub dropped: u64,
    pub overflowed: u64,
    pub delivered: u64,
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    overflowed: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct Shared {
    settings: RwLock<WebhookSettings>,
    log: Mutex<VecDeque<Attempt>>,
    counters: Counters,
}

/// The portal's webhook subscriptions and delivery.
pub struct Webhooks {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Value>,
    next_event_id: AtomicU64,
    portal_id: u64,
    app_id: u64,
}

type HmacSha256 = Hmac<Sha256>;

/// `base64(HMAC-SHA256(secret, method + uri + body + timestamp))`.
pub fn signature_v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `hex(SHA-256(secret + body))`, the v1 signature HubSpot sends alongside.
fn signature_v1(secret: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn subscription_id(subscription_type: &str) -> u64 {
    subscription_type.bytes().fold(1_000_000u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    }) % 9_000_000
        + 1_000_000
}

impl Webhooks {
    /// Starts the dispatcher on the current Tokio runtime.
    pub fn new(client_secret: String, portal_id: u64, app_id: u64) -> Self {
        let shared = Arc::new(Shared {
            settings: RwLock::new(WebhookSettings {
                target_url: None,
                client_secret,
                drop: false,
                max_batch: MAX_BATCH,
                max_retries: MAX_RETRIES,
                retry_base_ms: 1_000,
                timeout_ms: 5_000,
                concurrency: 4,
                subscriptions: None,
            }),
            log: Mutex::default(),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(shared.clone(), rx));
        Webhooks {
            shared,
            tx,
            next_event_id: AtomicU64::new(1),
            portal_id,
            app_id,
        }
    }

    pub fn settings(&self) -> WebhookSettings {
        self.shared.settings.read().expect("webhooks lock").clone()
    }

    pub fn configure(&self, p: WebhookPatch) {
        let mut s = self.shared.settings.write().expect("webhooks lock");
        if let Some(v) = p.target_url {
            s.target_url = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = p.client_secret {
            s.client_secret = v;
        }
        if let Some(v) = p.drop {
            s.drop = v;
        }
        if let Some(v) = p.max_batch {
            s.max_batch = v.clamp(1, MAX_BATCH);
        }
        if let Some(v) = p.max_retries {
            s.max_retries = v.min(MAX_RETRIES);
        }
        if let Some(v) = p.retry_base_ms {
            s.retry_base_ms = v;
        }
        if let Some(v) = p.timeout_ms {
            s.timeout_ms = v.max(1);
        }
        if let Some(v) = p.concurrency {
            s.concurrency = v.max(1);
        }
        if let Some(v) = p.subscriptions {
            s.subscriptions = Some(v);
        }
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared
            .log
            .lock()
            .expect("webhooks lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn stats(&self) -> WebhookStats {
        let c = &self.shared.counters;
        WebhookStats {
            published: c.published.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            overflowed: c.overflowed.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Queues the events of one write.
    pub fn publish(&self, caller: &Caller, applied: &Applied) {
        let (enabled, drop, subs) = {
            let s = self.shared.settings.read().expect("webhooks lock");
            (s.target_url.is_some(), s.drop, s.subscriptions.clone())
        };
        if !enabled {
            return;
        }
        let prefix = applied.ty.singular();
        let occurred_at = applied.record.updated_ms;
        let mut events: Vec<(String, Option<(&str, &str)>)> = Vec::new();
        match applied.kind {
            ChangeKind::Creation => {
                events.push((format!("{prefix}.creation"), None));
                for (k, v) in &applied.changed {
                    events.push((format!("{prefix}.propertyChange"), Some((k, v))));
                }
            }
            ChangeKind::Update => {
                for (k, v) in &applied.changed {
                    events.push((format!("{prefix}.propertyChange"), Some((k, v))));
                }
            }
            ChangeKind::Deletion => events.push((format!("{prefix}.deletion"), None)),
        }
        let c = &self.shared.counters;
        for (sub_type, prop) in events {
            if subs.as_ref().is_some_and(|s| !s.contains(&sub_type)) {
                continue;
            }
            c.published.fetch_add(1, Ordering::Relaxed);
            if drop {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut ev = json!({
                "eventId": self.next_event_id.fetch_add(1, Ordering::Relaxed),
                "subscriptionId": subscription_id(&sub_type),
                "portalId": self.portal_id,
                "appId": self.app_id,
                "occurredAt": occurred_at,
                "subscriptionType": sub_type,
                "attemptNumber": 0,
                "objectId": applied.record.id,
                "changeFlag": match applied.kind {
                    ChangeKind::Creation => "CREATED",
                    ChangeKind::Update => "UPDATED",
                    ChangeKind::Deletion => "DELETED",
                },
                "changeSource": caller.change_source,
                "sourceId": caller.source_id,
            });
            if let Some((name, value)) = prop {
                ev["propertyName"] = json!(name);
                ev["propertyValue"] = json!(value);
            }
            if self.tx.try_send(ev).is_err() {
                c.overflowed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<Value>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .expect("HTTP client builds");
    let mut limit = Arc::new(Semaphore::new(4));
    let mut concurrency = 4;
    while let Some(first) = rx.recv().await {
        let settings = shared.settings.read().expect("webhooks lock").clone();
        if settings.concurrency != concurrency {
            concurrency = settings.concurrency;
            limit = Arc::new(Semaphore::new(concurrency));
        }
        let mut batch = vec![first];
        while batch.len() < settings.max_batch {
            match tokio::time::timeout(LINGER, rx.recv()).await {
                Ok(Some(ev)) => batch.push(ev),
                _ => break,
            }
        }
        let Some(url) = settings.target_url.clone() else {
            continue;
        };
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let client = client.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            deliver(&client, &shared, &settings, &url, batch).await;
            drop(permit);
        });
    }
}

async fn deliver(
    client: &reqwest::Client,
    shared: &Shared,
    settings: &WebhookSettings,
    url: &str,
    mut batch: Vec<Value>,
) {
    let ids: Vec<u64> = batch.iter().filter_map(|e| e["eventId"].as_u64()).collect();
    let log = |a: Attempt| {
        let mut l = shared.log.lock().expect("webhooks lock");
        if l.len() >= LOG_CAP {
            l.pop_front();
        }
        l.push_back(a);
    };
    for attempt in 0..=settings.max_retries {
        for ev in &mut batch {
            ev["attemptNumber"] = json!(attempt);
        }
        let body = serde_json::to_vec(&batch).expect("events serialize");
        let ts = chrono::Utc::now().timestamp_millis().to_string();
        let sig = signature_v3(&settings.client_secret, "POST", url, &body, &ts);
        let result = client
            .post(url)
            .timeout(Duration::from_millis(settings.timeout_ms))
            .header("content-type", "application/json")
            .header("x-hubspot-signature-v3", sig)
            .header("x-hubspot-request-timestamp", &ts)
            .header(
                "x-hubspot-signature",
                signature_v1(&settings.client_secret, &body),
            )
            .header("x-hubspot-signature-version", "v1")
            .body(body)
            .send()
            .await;
        let (status, error) = match result {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (
                None,
                Some(
                    if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection failed"
                    }
                    .to_string(),
                ),
            ),
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let client_error = status.is_some_and(|s| (400..500).contains(&s));
        log(Attempt {
            event_ids: ids.clone(),
            attempt_number: attempt,
            status,
            error,
            delivered,
        });
        if delivered {
            shared
                .counters
                .delivered
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            return;
        }
        if client_error || attempt == settings.max_retries {
            break;
        }
        let backoff = settings
            .retry_base_ms
            .saturating_mul(1u64 << attempt.min(16))
            .min(3_600_000);
        tokio::time::sleep(Duration::from_millis(backoff)).await;
    }
    shared
        .counters
        .failed
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
}
