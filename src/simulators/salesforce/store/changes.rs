//! What the store records about its writes: the written log that tests
//! read at `/__admin/written`, and the Change Data Capture events
//! (`<Entity>ChangeEvent` with replay ids) that the CometD endpoint
//! (`cometd`) delivers.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::super::schema::ObjectSchema;
use super::{Store, USER_ID, WriteCtx, format_datetime};

/// One entry of `/__admin/written`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    pub seq: u64,
    pub at: String,
    pub object: String,
    pub op: &'static str,
    pub id: String,
    pub fields: Map<String, Value>,
    pub client: Option<String>,
}

/// One stored change event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub replay_id: u64,
    pub entity: String,
    /// The Bayeux `data` member: `{schema, payload, event: {replayId}}`.
    pub data: Value,
}

impl Store {
    pub(super) fn log_written(
        &mut self,
        ctx: &WriteCtx,
        object: &str,
        op: &'static str,
        id: &str,
        fields: Map<String, Value>,
    ) {
        let seq = self.next_written;
        self.next_written += 1;
        self.written.push_back(Written {
            seq,
            at: format_datetime(self.now()),
            object: object.to_string(),
            op,
            id: id.to_string(),
            fields,
            client: ctx.client.clone(),
        });
    }

    /// Entries of the written log after `after`, oldest first.
    pub fn written_since(&self, after: u64, object: Option<&str>) -> Vec<Written> {
        // Entries are in `seq` order: skip to the first one after `after`.
        let from = self.written.partition_point(|w| w.seq <= after);
        self.written
            .range(from..)
            .filter(|w| object.is_none_or(|o| w.object.eq_ignore_ascii_case(o)))
            .cloned()
            .collect()
    }

    pub(super) fn emit(
        &mut self,
        ctx: &WriteCtx,
        schema: &ObjectSchema,
        change_type: &str,
        id: &str,
        rec: &Map<String, Value>,
        before: Option<&Map<String, Value>>,
    ) {
        let replay_id = self.next_replay;
        self.next_replay += 1;
        let sequence = self
            .undo
            .as_ref()
            .map(|u| self.events.len() - u.events_len)
            .unwrap_or(0)
            + 1;
        let header = json!({
            "entityName": schema.name,
            "recordIds": [id],
            "changeType": change_type,
            "changeOrigin": ctx.change_origin(),
            "transactionKey": ctx.transaction_key,
            "sequenceNumber": sequence,
            "commitTimestamp": self.now().timestamp_millis(),
            "commitNumber": self.commit_number,
            "commitUser": USER_ID,
        });
        let payload = super::super::cometd::event_payload(schema, change_type, header, rec, before);
        self.events.push_back(StoredEvent {
            replay_id,
            entity: schema.name.clone(),
            data: json!({
                "schema": format!("{}ChangeEventSchemaV1", schema.name),
                "payload": payload,
                "event": { "replayId": replay_id },
            }),
        });
    }

    /// Replay id of the newest event, 0 when there is none.
    pub fn last_replay_id(&self) -> u64 {
        self.next_replay - 1
    }

    /// Replay id of the oldest retained event.
    pub fn first_replay_id(&self) -> u64 {
        self.events
            .front()
            .map(|e| e.replay_id)
            .unwrap_or(self.next_replay)
    }

    /// Events after `replay_id` for `entity` (all entities when `None`), at most `max`.
    pub fn events_after(
        &self,
        replay_id: u64,
        entity: Option<&str>,
        max: usize,
    ) -> Vec<StoredEvent> {
        let start = self.events.partition_point(|e| e.replay_id <= replay_id);
        self.events
            .range(start..)
            .filter(|e| entity.is_none_or(|n| e.entity == n))
            .take(max)
            .cloned()
            .collect()
    }
}
