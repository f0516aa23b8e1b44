//! A CometD (Bayeux long-polling) subscriber for Change Data Capture:
//! handshake, subscribe with Salesforce's replay extension, then one
//! `/meta/connect` per [`CdcSubscriber::poll`]. The caller owns the durable
//! position: it stores [`CdcEvent::replay_id`] once an event is safely
//! handled and passes it back as [`ReplayFrom::After`] on restart.
//!
//! ```text
//!  CdcSubscriber ──handshake──► /cometd/XX.X ──subscribe(ext.replay={channel: id})──► connect (long poll)
//!        ▲   401 / "reconnect: handshake": refresh token, handshake again, resubscribe after the last event seen
//!        └── poll() → Vec<CdcEvent{replay_id, events: Vec<WebhookEvent>}>
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::SalesforceConnector;
use super::webhook::events_from_change;
use crate::connectors::{ConnectorError, ErrorClass, WebhookEvent};

/// How long one `/meta/connect` may wait for events, asked of the server.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(110);

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Only events published from now on (`-1`).
    Latest,
    /// Every retained event (`-2`, up to 72 hours back).
    Earliest,
    /// Events after this replay id.
    After(u64),
}

impl ReplayFrom {
    fn wire(self) -> i64 {
        match self {
            ReplayFrom::Latest => -1,
            ReplayFrom::Earliest => -2,
            ReplayFrom::After(n) => n as i64,
        }
    }
}

/// One change event as delivered.
#[derive(Debug, Clone)]
pub struct CdcEvent {
    pub replay_id: u64,
    pub channel: String,
    /// The raw `payload` (header and field values).
    pub payload: Value,
    /// The same change as one event per record.
    pub events: Vec<WebhookEvent>,
}

/// A subscription to one channel, e.g. `/data/ChangeEvents` or
/// `/data/AccountChangeEvent`.
pub struct CdcSubscriber {
    connector: Arc<SalesforceConnector>,
    channel: String,
    position: ReplayFrom,
    poll_timeout: Duration,
    http: reqwest::Client,
    client_id: Option<String>,
    next_id: u64,
}

impl CdcSubscriber {
    pub fn new(
        connector: Arc<SalesforceConnector>,
        channel: impl Into<String>,
        from: ReplayFrom,
    ) -> Self {
        Self::with_poll_timeout(connector, channel, from, DEFAULT_POLL_TIMEOUT)
    }

    pub fn with_poll_timeout(
        connector: Arc<SalesforceConnector>,
        channel: impl Into<String>,
        from: ReplayFrom,
        poll_timeout: Duration,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(poll_timeout + Duration::from_secs(20))
            .connect_timeout(crate::connectors::http::CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client builds");
        CdcSubscriber {
            connector,
            channel: channel.into(),
            position: from,
            poll_timeout,
            http,
            client_id: None,
            next_id: 1,
        }
    }

    /// Where a new session would resume: after the last event returned.
    pub fn position(&self) -> ReplayFrom {
        self.position
    }

    /// Goes back to `from`: the session ends, and the next [`Self::poll`]
    /// subscribes again from there, so events returned but not handled are
    /// delivered again.
    pub async fn resume_from(&mut self, from: ReplayFrom) {
        self.disconnect().await;
        self.position = from;
    }

    async fn exchange(&mut self, messages: Vec<Value>) -> Result<Vec<Value>, ConnectorError> {
        let token = self.connector.token().await?;
        let url = format!(
            "{}/cometd/{}",
            token.instance_url.clone().unwrap_or_default(),
            self.connector.settings.api_version
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(&token.value)
            .json(&messages)
            .send()
            .await
            .map_err(ConnectorError::from_transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(ConnectorError::from_transport)?;
        if !status.is_success() {
            let err = super::errors::from_response(
                status,
                &Default::default(),
                &body,
                self.connector.settings.limit_wait,
            );
            if err.class == ErrorClass::AuthExpired {
                self.connector.token_rejected(&token).await;
                self.client_id = None;
            }
            return Err(err);
        }
        let replies: Vec<Value> = serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::new(ErrorClass::Transient, "unexpected CometD answer").with_source(e)
        })?;
        for r in &replies {
            let meta = r.get("channel").and_then(Value::as_str).unwrap_or_default();
            if meta.starts_with("/meta/") && r.get("successful") == Some(&Value::Bool(false)) {
                let error = r
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("CometD failure");
                let auth = error.starts_with("401::")
                    || r.pointer("/ext/sfdc/failureReason")
                        .and_then(Value::as_str)
                        .is_some_and(|f| f.starts_with("401::"));
                self.client_id = None;
                if auth {
                    self.connector.token_rejected(&token).await;
                    return Err(
                        ConnectorError::new(ErrorClass::AuthExpired, error).with_code("401")
                    );
                }
                let class = if error.contains("replayId") {
                    ErrorClass::NotFound
                } else if error.starts_with("400::") {
                    ErrorClass::FieldValidation
                } else {
                    ErrorClass::Transient
                };
                return Err(ConnectorError::new(class, error));
            }
        }
        Ok(replies)
    }

    fn message(&mut self, mut m: Value) -> Value {
        m["id"] = json!(self.next_id.to_string());
        self.next_id += 1;
        if let Some(c) = &self.client_id {
            m["clientId"] = json!(c);
        }
        m
    }

    async fn open(&mut self) -> Result<(), ConnectorError> {
        let hs = self.message(json!({
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "ext": { "replay": true },
        }));
        let replies = self.exchange(vec![hs]).await?;
        let client_id = replies
            .iter()
            .find_map(|r| r.get("clientId").and_then(Value::as_str))
            .ok_or_else(|| {
                ConnectorError::new(ErrorClass::Transient, "handshake without clientId")
            })?
            .to_string();
        self.client_id = Some(client_id);
        let sub = self.message(json!({
            "channel": "/meta/subscribe",
            "subscription": self.channel,
            "ext": { "replay": { self.channel.clone(): self.position.wire() } },
        }));
        self.exchange(vec![sub]).await?;
        tracing::info!(provider = "salesforce", channel = %self.channel, "change event subscription open");
        Ok(())
    }

    /// Waits for the next events (up to the poll timeout; an empty result
    /// means none arrived). Reconnects by itself after session loss.
    pub async fn poll(&mut self) -> Result<Vec<CdcEvent>, ConnectorError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = self.poll_once().await;
            match result {
                Err(e) if e.class == ErrorClass::AuthExpired && attempts < 2 => continue,
                other => return other,
            }
        }
    }

    async fn poll_once(&mut self) -> Result<Vec<CdcEvent>, ConnectorError> {
        if self.client_id.is_none() {
            self.open().await?;
        }
        let connect = self.message(json!({
            "channel": "/meta/connect",
            "connectionType": "long-polling",
            "advice": { "timeout": self.poll_timeout.as_millis() as u64 },
        }));
        let replies = self.exchange(vec![connect]).await?;
        let mut out = Vec::new();
        for r in replies {
            let channel = r.get("channel").and_then(Value::as_str).unwrap_or_default();
            if channel.starts_with("/meta/") {
                continue;
            }
            let Some(data) = r.get("data") else { continue };
            let replay_id = data
                .pointer("/event/replayId")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    ConnectorError::new(ErrorClass::Transient, "change event without replayId")
                })?;
            let payload = data.get("payload").cloned().unwrap_or(Value::Null);
            let events = events_from_change(&payload, &self.connector.settings.call_client)?;
            self.position = ReplayFrom::After(replay_id);
            out.push(CdcEvent {
                replay_id,
                channel: channel.to_string(),
                payload,
                events,
            });
        }
        if !out.is_empty() {
            tracing::debug!(provider = "salesforce", channel = %self.channel, events = out.len(), "change events received");
        }
        Ok(out)
    }

    /// Ends the CometD session.
    pub async fn disconnect(&mut self) {
        if self.client_id.is_some() {
            let m = self.message(json!({ "channel": "/meta/disconnect" }));
            let _ = self.exchange(vec![m]).await;
            self.client_id = None;
        }
    }
}
