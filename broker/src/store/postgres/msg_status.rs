//! [`MessageStatusStore`](crate::store::msg_status::MessageStatusStore) on PostgreSQL.
//!
//! Undelivered direct messages are read from `message_queue`; confirmed ones are copied
//! into `message_status` by the `client_ack` statements (`sql/ack_by_*.sql`); fan-outs are
//! group-committed into it by a writer task, like sends and audit appends.

use async_trait::async_trait;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::msg_status::{MessageStatusStore, SentMessage, SentTarget};

/// A whole message id: looked up by the queue's unique index. Shorter ones are prefixes.
const WHOLE_ID_LEN: usize = 32;

/// Writes one batch of fan-out records with one statement.
pub(super) async fn fanout_batch(
    c: deadpool_postgres::Object,
    batch: Vec<SentMessage>,
) -> StoreResult<Vec<()>> {
    let mut cols = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for m in &batch {
        let spec = match &m.target {
            SentTarget::Fanout { spec } => spec.clone(),
            // Direct messages are recorded by the ack statement; never sent here.
            SentTarget::Direct { .. } => continue,
        };
        cols.0.push(m.mesh_id.clone());
        cols.1.push(m.id.clone());
        cols.2.push(m.sender_member_id.clone());
        cols.3.push(spec);
        cols.4.push(m.created_at);
        cols.5.push(m.delivered_at);
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO message_status (mesh_id, id, sender_member_id, target_spec, created_at, delivered_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) \
             ON CONFLICT (mesh_id, id) DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    c.execute(
        &stmt,
        &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5],
    )
    .await
    .map_err(pg_error)?;
    Ok(vec![(); batch.len()])
}

fn sent(mesh_id: &str, r: &tokio_postgres::Row) -> SentMessage {
    let target = match r.get::<_, Option<String>>("target_spec") {
        Some(spec) => SentTarget::Fanout { spec },
        None => SentTarget::Direct {
            member_id: r
                .get::<_, Option<String>>("target_member_id")
                .unwrap_or_default(),
            session_key: r.get("target_session_key"),
        },
    };
    SentMessage {
        id: r.get("id"),
        mesh_id: mesh_id.to_string(),
        sender_member_id: r.get("sender_member_id"),
        target,
        created_at: r.get("created_at"),
        delivered_at: r.get("delivered_at"),
    }
}

#[async_trait]
impl MessageStatusStore for PgStore {
    async fn record_fanout(&self, message: SentMessage) -> StoreResult<()> {
        self.fanouts.submit(message).await
    }

    async fn find_sent(
        &self,
        mesh_id: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<SentMessage>> {
        let limit = limit as i64;
        // The queue's unique index answers a whole id; a prefix scans the mesh's pending
        // rows (the drain index leads with the mesh). Status records are a range of their
        // primary key (`id` is in the "C" collation; ids are base62, all below '{').
        let queue_match = if prefix.len() >= WHOLE_ID_LEN {
            "id = $2"
        } else {
            "starts_with(id, $2)"
        };
        let sql = format!(
            "(SELECT id, sender_member_id, target_member_id, target_session_key, NULL::text AS target_spec, \
                     created_at, NULL::bigint AS delivered_at \
              FROM message_queue WHERE mesh_id = $1 AND {queue_match} AND delivered_at IS NULL LIMIT $3) \
             UNION ALL \
             (SELECT id, sender_member_id, target_member_id, target_session_key, target_spec, created_at, delivered_at \
              FROM message_status WHERE mesh_id = $1 AND id >= $2 AND id < $2 || '{{' LIMIT $3)"
        );
        let rows = self.query(&sql, &[&mesh_id, &prefix, &limit]).await?;
        Ok(rows.iter().map(|r| sent(mesh_id, r)).collect())
    }

    async fn sweep_message_status(&self, before_ms: i64) -> StoreResult<u64> {
        self.execute(
            "DELETE FROM message_status WHERE created_at < $1",
            &[&before_ms],
        )
        .await
    }
}
