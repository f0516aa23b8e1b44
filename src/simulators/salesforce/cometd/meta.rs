//! The Bayeux meta channels a session goes through before and after its
//! long polls: `/meta/handshake` opens it, `/meta/subscribe` (with the
//! replay extension) and `/meta/unsubscribe` pick its channels,
//! `/meta/disconnect` ends it; anything else is a denied publish.

use std::time::Instant;

use serde_json::{Map, Value, json};

use super::{ALL_CHANGES, Client, Shared, Subscription};

pub(super) fn reply(msg: &Map<String, Value>, channel: &str) -> Map<String, Value> {
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

pub(super) fn failure(mut r: Map<String, Value>, error: &str, reconnect: &str) -> Value {
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

/// `/meta/handshake`: opens a session (dropping stale ones) for an
/// authenticated caller.
pub(super) fn handshake(sim: &Shared, msg: &Map<String, Value>, authed: bool) -> Value {
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

/// `/meta/unsubscribe`: drops the client's subscription to a channel.
pub(super) fn unsubscribe(
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
pub(super) fn disconnect(sim: &Shared, cid: &str, mut r: Map<String, Value>) -> Value {
    sim.cometd.clients.lock().expect("cometd lock").remove(cid);
    r.insert("successful".into(), json!(true));
    Value::Object(r)
}

/// Any other channel: clients may not publish.
pub(super) fn publish_denied(msg: &Map<String, Value>, channel: &str) -> Value {
    failure(
        reply(msg, channel),
        &format!("403::Publish denied for channel {channel}"),
        "none",
    )
}

pub(super) fn subscribe(
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
