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
use super::schema::ObjectSchema;

/// Events returned by one `/meta/connect` at most.
const MAX_EVENTS_PER_CONNECT: usize = 2_000;
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

fn reply(msg: &Map<String, Value>, channel: &str) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("channel".into(), json!(channel));
    if let Some(id) = msg.get("id") {
        r.insert("id".into(), id.clone());
    }
    if let Some(c) = msg.get("clientId") {
        r.insert("clientId".into(), c.clone());
    }
    r
}

fn failure(mut r: Map<String, Value>, error: &str, reconnect: &str) -> Value {
    r.insert("successful".into(), json!(false));
    r.insert("error".into(), json!(error));
    r.insert(
        "advice".into(),
        json!({ "reconnect": reconnect, "interval": 0 }),
    );
    Value::Object(r)
}

fn entity_of_channel(sim: &Shared, channel: &str) -> Result<Option<String>, ()> {
    if channel == ALL_CHANGES {
        return Ok(None);
    }
    let name = channel
        .strip_prefix("/data/")
        .and_then(|c| c.strip_suffix("ChangeEvent"))
        .ok_or(())?;
    let store = sim.store.lock().expect("store lock");
    store
        .schema(name)
        .filter(|s| s.name == name)
        .map(|s| Some(s.name.clone()))
        .ok_or(())
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

/// `/meta/handshake`: opens a session (dropping stale ones) for an
/// authenticated caller.
fn handshake(sim: &Shared, msg: &Map<String, Value>, authed: bool) -> Value {
    let mut r = reply(msg, "/meta/handshake");
    if !authed {
        r.insert(
            "ext".into(),
            json!({ "sfdc": { "failureReason": "401::Authentication invalid" }, "replay": true, "payload.format": true }),
        );
        return failure(r, "403::Handshake denied", "none");
    }
    let id = format!("{}", uuid::Uuid::new_v4().simple());
    {
        let mut clients = sim.cometd.clients.lock().expect("cometd lock");
        let stale = sim.cometd.timeout * 3;
        clients.retain(|_, c| c.last_seen.elapsed() < stale);
        clients.insert(
            id.clone(),
            Client {
                subscriptions: Vec::new(),
                connected_once: false,
                last_seen: Instant::now(),
            },
        );
    }
    r.insert("clientId".into(), json!(id));
    r.insert("version".into(), json!("1.0"));
    r.insert("minimumVersion".into(), json!("1.0"));
    r.insert("supportedConnectionTypes".into(), json!(["long-polling"]));
    r.insert("successful".into(), json!(true));
    r.insert(
        "ext".into(),
        json!({ "replay": true, "payload.format": true }),
    );
    r.insert("advice".into(), sim.cometd.advice());
    Value::Object(r)
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

/// `/meta/unsubscribe`: drops the client's subscription to a channel.
fn unsubscribe(
    sim: &Shared,
    cid: &str,
    msg: &Map<String, Value>,
    mut r: Map<String, Value>,
) -> Value {
    let sub = msg
        .get("subscription")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(c) = sim.cometd.clients.lock().expect("cometd lock").get_mut(cid) {
        c.subscriptions.retain(|s| s.channel != sub);
    }
    r.insert("subscription".into(), json!(sub));
    r.insert("successful".into(), json!(true));
    Value::Object(r)
}

/// `/meta/disconnect`: ends the session.
fn disconnect(sim: &Shared, cid: &str, mut r: Map<String, Value>) -> Value {
    sim.cometd.clients.lock().expect("cometd lock").remove(cid);
    r.insert("successful".into(), json!(true));
    Value::Object(r)
}

/// `/meta/connect`: the client's pending events, waiting for some up to
/// the requested (at most the advised) timeout, then the connect reply.
async fn long_poll(
    sim: &Shared,
    cid: &str,
    msg: &Map<String, Value>,
    mut r: Map<String, Value>,
) -> Vec<Value> {
    let wait = msg
        .get("advice")
        .and_then(|a| a.get("timeout"))
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
        .unwrap_or(sim.cometd.timeout)
        .min(sim.cometd.timeout);
    let mut out = connect(sim, cid, wait).await;
    r.insert("successful".into(), json!(true));
    r.insert("advice".into(), sim.cometd.advice());
    out.push(Value::Object(r));
    out
}

/// Any other channel: clients may not publish.
fn publish_denied(msg: &Map<String, Value>, channel: &str) -> Value {
    failure(
        reply(msg, channel),
        &format!("403::Publish denied for channel {channel}"),
        "none",
    )
}

fn subscribe(
    sim: &Shared,
    cid: &str,
    msg: &Map<String, Value>,
    mut r: Map<String, Value>,
) -> Value {
    let sub = msg
        .get("subscription")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    r.insert("subscription".into(), json!(sub));
    let Ok(entity) = entity_of_channel(sim, &sub) else {
        return failure(
            r,
            &format!("400::The channel you requested to subscribe to does not exist {{{sub}}}"),
            "retry",
        );
    };
    let replay = msg
        .get("ext")
        .and_then(|e| e.get("replay"))
        .and_then(|r| r.get(&sub))
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    let (first, last) = {
        let store = sim.store.lock().expect("store lock");
        (store.first_replay_id(), store.last_replay_id())
    };
    let after = match replay {
        -1 => last,
        -2 => first.saturating_sub(1),
        n if n >= 0 && (n as u64) + 1 >= first => (n as u64).min(last),
        n => {
            return failure(
                r,
                &format!(
                    "400::The replayId {{{n}}} you provided was invalid.  Please provide a valid ID, -2 to replay all events, or -1 to replay only new events."
                ),
                "retry",
            );
        }
    };
    if let Some(c) = sim.cometd.clients.lock().expect("cometd lock").get_mut(cid) {
        c.subscriptions.retain(|s| s.channel != sub);
        c.subscriptions.push(Subscription {
            channel: sub,
            entity,
            after,
        });
    }
    r.insert("successful".into(), json!(true));
    Value::Object(r)
}

/// Pending events of one client, waiting up to `wait` when there are none
/// (the first connect after a handshake returns at once).
async fn connect(sim: &Shared, cid: &str, wait: Duration) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut rx = sim.cometd.latest.subscribe();
    loop {
        let (events, first) = collect(sim, cid);
        if !events.is_empty() || first {
            return events;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return events;
        }
        if tokio::time::timeout(left, rx.changed()).await.is_err() {
            return collect(sim, cid).0;
        }
    }
}

fn collect(sim: &Shared, cid: &str) -> (Vec<Value>, bool) {
    let mut clients = sim.cometd.clients.lock().expect("cometd lock");
    let Some(client) = clients.get_mut(cid) else {
        return (Vec::new(), true);
    };
    let first = !client.connected_once;
    client.connected_once = true;
    let store = sim.store.lock().expect("store lock");
    let mut out = Vec::new();
    for sub in client.subscriptions.iter_mut() {
        let room = MAX_EVENTS_PER_CONNECT.saturating_sub(out.len());
        if room == 0 {
            break;
        }
        for e in store.events_after(sub.after, sub.entity.as_deref(), room) {
            sub.after = e.replay_id;
            out.push(json!({ "channel": sub.channel, "data": e.data }));
        }
    }
    (out, first)
}

fn put_compound(payload: &mut Map<String, Value>, compound: &str, part: &str, v: Value) {
    let entry = payload
        .entry(compound.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = entry {
        m.insert(part.to_string(), v);
    }
}

/// The `payload` of a change event: the header plus field values —
/// all non-null fields for CREATE, the changed ones for UPDATE, none for
/// DELETE. Address and name parts are grouped in their compound field.
pub fn event_payload(
    schema: &ObjectSchema,
    change_type: &str,
    mut header: Value,
    rec: &Map<String, Value>,
    before: Option<&Map<String, Value>>,
) -> Value {
    let mut payload = Map::new();
    let mut changed = Vec::new();
    let mut nulled = Vec::new();
    let skip = ["Id", "IsDeleted", "SystemModstamp"];
    if change_type != "DELETE" {
        for f in &schema.fields {
            if skip.contains(&f.name.as_str()) {
                continue;
            }
            let v = rec.get(&f.name).cloned().unwrap_or(Value::Null);
            let include = match before {
                None => !v.is_null(),
                Some(old) => {
                    let was = old.get(&f.name).cloned().unwrap_or(Value::Null);
                    let differs = was != v;
                    let always = f.name == "LastModifiedDate";
                    if differs || always {
                        let name = match f.compound {
                            Some((c, p)) => format!("{c}.{p}"),
                            None => f.name.clone(),
                        };
                        if v.is_null() {
                            nulled.push(name.clone());
                        }
                        changed.push(name);
                    }
                    differs || always
                }
            };
            if !include {
                continue;
            }
            match f.compound {
                Some((c, p)) => put_compound(&mut payload, c, p, v),
                None => {
                    payload.insert(f.name.clone(), v);
                }
            }
        }
    }
    header["changedFields"] = json!(changed);
    header["nulledFields"] = json!(nulled);
    header["diffFields"] = json!([]);
    payload.insert("ChangeEventHeader".into(), header);
    Value::Object(payload)
}
