//! Durable polling cursors: one `(modified_at, id)` watermark per integration
//! and object in `extsync.poll_cursors`, advanced only after the page it
//! covers is in Kafka.

use crate::connectors::Cursor;
use crate::store::Db;

#[derive(Clone)]
pub struct CursorStore {
    db: Db,
}

impl CursorStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn load(
        &self,
        integration: &str,
        object: &str,
    ) -> Result<Option<Cursor>, tokio_postgres::Error> {
        let row = self
            .db
            .client()
            .await?
            .query_opt(
                "SELECT modified_at, record_id FROM extsync.poll_cursors WHERE integration = $1 AND object = $2",
                &[&integration, &object],
            )
            .await?;
        Ok(row.map(|r| Cursor {
            modified_at: r.get(0),
            id: r.get(1),
        }))
    }

    /// Moves the cursor forward; a cursor never moves back.
    pub async fn advance(
        &self,
        integration: &str,
        object: &str,
        to: &Cursor,
    ) -> Result<(), tokio_postgres::Error> {
        self.db
            .client()
            .await?
            .execute(
                "INSERT INTO extsync.poll_cursors AS c (integration, object, modified_at, record_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (integration, object) DO UPDATE
                    SET modified_at = excluded.modified_at, record_id = excluded.record_id, updated_at = now()
                  WHERE (c.modified_at, c.record_id) < (excluded.modified_at, excluded.record_id)",
                &[&integration, &object, &to.modified_at, &to.id],
            )
            .await?;
        Ok(())
    }
}
