//! Event delivery: a `/meta/connect` long poll hands a session the change
//! events its subscriptions have not seen yet, waiting for the store's next
//! write when there are none.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::Shared;

/// Events returned by one `/meta/connect` at most.
const MAX_EVENTS_PER_CONNECT: usize = 2_000;

/// `/meta/connect`: the client's pending events, waiting for some up to
/// the requested (at most the advised) timeout, then the connect reply.
pub(super) async fn long_poll(
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
