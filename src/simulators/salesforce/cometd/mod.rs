//! Change Data Capture over CometD / Bayeux long-polling at `/cometd/XX.X`:
//! `/meta/handshake`, `/meta/subscribe` to `/data/ChangeEvents` or
//! `/data/<Entity>ChangeEvent` with Salesforce's replay extension
//! (`ext.replay = {channel: replayId | -1 new only | -2 all retained}`),
//! `/meta/connect` (returns pending events at once, otherwise waits up to the
//! advised timeout), `/meta/unsubscribe`, `/meta/disconnect`.
//!
//! ```text
//!  store write ──► StoredEvent{replayId, data{schema, payload{ChangeEventHeader, fields}, event}}
//!       └─ notify ──► Hub ──► waiting /meta/connect ──► [{channel, data}, …, {/meta/connect}]
//! ```

mod delivery;
mod meta;
mod payload;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::Shared;
use delivery::long_poll;
use meta::{disconnect, failure, handshake, publish_denied, reply, subscribe, unsubscribe};
pub use payload::event_payload;

/// Channel of every entity's change events.
pub const ALL_CHANGES: &str = "/data/ChangeEvents";

struct Subscription {
    channel: String,
    /// `None` for `/data/ChangeEvents`.
    entity: Option<String>,
    after: u64,
}

struct Client {
    subscriptions: Vec<Subscription>,
    connected_once: bool,
    last_seen: Instant,
}

/// The CometD sessions and the wake-up signal for long polls.
pub struct Hub {
    timeout: Duration,
    clients: Mutex<HashMap<String, Client>>,
    latest: watch::Sender<u64>,
}

impl Hub {
    pub fn new(timeout: Duration) -> Self {
        Hub {
            timeout,
            clients: Mutex::new(HashMap::new()),
            latest: watch::channel(0).0,
        }
    }

    /// Wakes long polls after a write.
    pub fn notify(&self, last_replay_id: u64) {
        self.latest.send_if_modified(|v| {
            if *v != last_replay_id {
                *v = last_replay_id;
                true
            } else {
                false
            }
        });
    }

    fn advice(&self) -> Value {
        json!({ "interval": 0, "timeout": self.timeout.as_millis() as u64, "reconnect": "retry" })
    }
}

/// `POST /cometd/XX.X`: one Bayeux request (an array of messages or one message).
pub async fn handle(
    State(sim): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(messages) = parse_messages(&body) else {
        return invalid_json();
    };
    let authed = super::oauth::authenticate(&sim, &headers).is_ok();
    let mut out = Vec::new();
    for msg in messages {
        let channel = msg
            .get("channel")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match channel.as_str() {
            "/meta/handshake" => out.push(handshake(&sim, &msg, authed)),
            "/meta/subscribe" | "/meta/unsubscribe" | "/meta/connect" | "/meta/disconnect" => {
                out.extend(session_message(&sim, &msg, &channel, authed).await);
            }
            other => out.push(publish_denied(&msg, other)),
        }
    }
    Json(Value::Array(out)).into_response()
}

/// The messages of a request body; `None` when it is not JSON.
fn parse_messages(body: &[u8]) -> Option<Vec<Map<String, Value>>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(a)) => Some(
            a.into_iter()
                .filter_map(|m| match m {
                    Value::Object(o) => Some(o),
                    _ => None,
                })
                .collect(),
        ),
        Ok(Value::Object(o)) => Some(vec![o]),
        _ => None,
    }
}

fn invalid_json() -> Response {
    (
        axum::http::StatusCode::BAD_REQUEST,
        Json(json!([{ "channel": "/meta/unknown", "successful": false, "error": "400::Invalid JSON" }])),
    )
        .into_response()
}

/// `/meta/subscribe`, `/meta/unsubscribe`, `/meta/connect` or
/// `/meta/disconnect` of a handshaken client: the replies to send.
async fn session_message(
    sim: &Shared,
    msg: &Map<String, Value>,
    channel: &str,
    authed: bool,
) -> Vec<Value> {
    let r = reply(msg, channel);
    let cid = match session_of(sim, msg, authed) {
        Ok(cid) => cid,
        Err((error, reconnect)) => return vec![failure(r, error, reconnect)],
    };
    match channel {
        "/meta/subscribe" => vec![subscribe(sim, &cid, msg, r)],
        "/meta/unsubscribe" => vec![unsubscribe(sim, &cid, msg, r)],
        "/meta/disconnect" => vec![disconnect(sim, &cid, r)],
        _ => long_poll(sim, &cid, msg, r).await,
    }
}

/// The client id of a known session, whose last-seen time it refreshes;
/// otherwise the failure's error and reconnect advice.
fn session_of(
    sim: &Shared,
    msg: &Map<String, Value>,
    authed: bool,
) -> Result<String, (&'static str, &'static str)> {
    if !authed {
        return Err(("401::Authentication invalid", "handshake"));
    }
    let client_id = msg
        .get("clientId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let known = client_id.as_ref().is_some_and(|c| {
        sim.cometd
            .clients
            .lock()
            .expect("cometd lock")
            .get_mut(c)
            .map(|cl| cl.last_seen = Instant::now())
            .is_some()
    });
    client_id
        .filter(|_| known)
        .ok_or(("403::Unknown client", "handshake"))
}
