//! [`TopicStore`](crate::store::topics::TopicStore) on PostgreSQL: tables `topic`,
//! `topic_member`, `topic_member_key`, `topic_message` and `notification` (V10).
//!
//! Creates serialise per mesh and joins per topic under transaction advisory locks, so the
//! bounds are exact; history pages on (`created_at`, `seq`), so messages of one millisecond
//! keep their insertion order and none is skipped.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::topics::{
    Created, Joined, MarkWhich, Notification, NotificationView, Sealed, SealedKey, Topic,
    TopicListing, TopicMember, TopicMessage, TopicStore,
};

/// First key of the per-mesh advisory lock of topic creation (the second: a hash of the
/// mesh id).
const CREATE_LOCK_CLASS: i32 = 0x746f_7063; // "topc"
/// First key of the per-topic advisory lock of joins.
const JOIN_LOCK_CLASS: i32 = 0x746f_706a; // "topj"

const TOPIC_COLUMNS: &str = "id, mesh_id, name, description, visibility, created_by_member_id, \
                             encrypted_key_pubkey, created_at, archived_at";

const MESSAGE_COLUMNS: &str = "id, topic_id, mesh_id, sender_member_id, sender_member_pubkey, \
                               sender_session_pubkey, sender_name, nonce, ciphertext, \
                               body_version, reply_to_id, queue_id, created_at";

fn topic_from_row(r: &Row) -> Topic {
    Topic {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        name: r.get("name"),
        description: r.get("description"),
        visibility: r.get("visibility"),
        created_by_member_id: r.get("created_by_member_id"),
        encrypted_key_pubkey: r.get("encrypted_key_pubkey"),
        created_at: r.get("created_at"),
        archived_at: r.get("archived_at"),
    }
}

fn member_from_row(r: &Row) -> TopicMember {
    TopicMember {
        topic_id: r.get("topic_id"),
        member_id: r.get("member_id"),
        role: r.get("role"),
        joined_at: r.get("joined_at"),
        last_read_at: r.get("last_read_at"),
    }
}

fn message_from_row(r: &Row) -> TopicMessage {
    let v: i16 = r.get("body_version");
    TopicMessage {
        id: r.get("id"),
        topic_id: r.get("topic_id"),
        mesh_id: r.get("mesh_id"),
        sender_member_id: r.get("sender_member_id"),
        sender_member_pubkey: r.get("sender_member_pubkey"),
        sender_session_pubkey: r.get("sender_session_pubkey"),
        sender_name: r.get("sender_name"),
        nonce: r.get("nonce"),
        ciphertext: r.get("ciphertext"),
        body_version: v as u8,
        reply_to_id: r.get("reply_to_id"),
        queue_id: r.get("queue_id"),
        created_at: r.get("created_at"),
    }
}

fn key_from_row(r: &Row) -> SealedKey {
    SealedKey {
        topic_id: r.get("topic_id"),
        member_id: r.get("member_id"),
        encrypted_key: r.get("encrypted_key"),
        nonce: r.get("nonce"),
        sealed_at: r.get("sealed_at"),
    }
}

fn bound(n: usize) -> i64 {
    n.min(i64::MAX as usize) as i64
}

/// Adds a membership inside `tx`, under the topic's join lock.
async fn join_in(
    tx: &tokio_postgres::Transaction<'_>,
    topic_id: &str,
    member_id: &str,
    role: &str,
    at: i64,
    max_members: usize,
) -> StoreResult<Joined> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&JOIN_LOCK_CLASS, &topic_id],
    )
    .await
    .map_err(pg_error)?;
    let row = tx
        .query_one(
            "SELECT count(*) AS n, bool_or(member_id = $2) AS already FROM topic_member \
             WHERE topic_id = $1",
            &[&topic_id, &member_id],
        )
        .await
        .map_err(pg_error)?;
    let n: i64 = row.get("n");
    let already: Option<bool> = row.get("already");
    if already == Some(true) {
        return Ok(Joined::Already);
    }
    if max_members > 0 && n >= bound(max_members) {
        return Ok(Joined::Full);
    }
    tx.execute(
        "INSERT INTO topic_member (topic_id, member_id, role, joined_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
        &[&topic_id, &member_id, &role, &at],
    )
    .await
    .map_err(pg_error)?;
    Ok(Joined::New)
}

#[async_trait]
impl TopicStore for PgStore {
    async fn topic_create(
        &self,
        t: Topic,
        creator_key: Option<SealedKey>,
        max_topics: usize,
    ) -> StoreResult<Created> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&CREATE_LOCK_CLASS, &t.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        if let Some(r) = tx
            .query_opt(
                &format!(
                    "SELECT {TOPIC_COLUMNS} FROM topic WHERE mesh_id = $1 AND name = $2 \
                     AND archived_at IS NULL"
                ),
                &[&t.mesh_id, &t.name],
            )
            .await
            .map_err(pg_error)?
        {
            return Ok(Created::Existing(topic_from_row(&r)));
        }
        if max_topics > 0 {
            let n: i64 = tx
                .query_one(
                    "SELECT count(*) FROM topic WHERE mesh_id = $1 AND archived_at IS NULL",
                    &[&t.mesh_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if n >= bound(max_topics) {
                return Ok(Created::TooMany);
            }
        }
        tx.execute(
            &format!(
                "INSERT INTO topic ({TOPIC_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            &[
                &t.id,
                &t.mesh_id,
                &t.name,
                &t.description,
                &t.visibility,
                &t.created_by_member_id,
                &t.encrypted_key_pubkey,
                &t.created_at,
                &t.archived_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        if let Some(creator) = &t.created_by_member_id {
            join_in(&tx, &t.id, creator, "lead", t.created_at, 0).await?;
        }
        if let Some(k) = &creator_key {
            tx.execute(
                "INSERT INTO topic_member_key (topic_id, member_id, encrypted_key, nonce, \
                 sealed_at) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &k.topic_id,
                    &k.member_id,
                    &k.encrypted_key,
                    &k.nonce,
                    &k.sealed_at,
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(Created::New(t))
    }

    async fn topic_list(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<TopicListing>> {
        let rows = self
            .query(
                "SELECT t.id, t.mesh_id, t.name, t.description, t.visibility, \
                 t.created_by_member_id, t.encrypted_key_pubkey, t.created_at, t.archived_at, \
                 (SELECT count(*) FROM topic_member m WHERE m.topic_id = t.id) AS member_count \
                 FROM topic t WHERE t.mesh_id = $1 AND t.archived_at IS NULL \
                 ORDER BY t.name COLLATE \"C\" LIMIT $2",
                &[&mesh_id, &bound(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TopicListing {
                topic: topic_from_row(r),
                member_count: r.get::<_, i64>("member_count") as u64,
            })
            .collect())
    }

    async fn topic_by_id(&self, mesh_id: &str, id: &str) -> StoreResult<Option<Topic>> {
        let rows = self
            .query(
                &format!("SELECT {TOPIC_COLUMNS} FROM topic WHERE mesh_id = $1 AND id = $2"),
                &[&mesh_id, &id],
            )
            .await?;
        Ok(rows.first().map(topic_from_row))
    }

    async fn topic_by_name(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Topic>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {TOPIC_COLUMNS} FROM topic WHERE mesh_id = $1 AND name = $2 \
                     AND archived_at IS NULL"
                ),
                &[&mesh_id, &name],
            )
            .await?;
        Ok(rows.first().map(topic_from_row))
    }

    async fn topic_join(
        &self,
        topic_id: &str,
        member_id: &str,
        role: &str,
        at: i64,
        max_members: usize,
    ) -> StoreResult<Joined> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let joined = join_in(&tx, topic_id, member_id, role, at, max_members).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(joined)
    }

    async fn topic_leave(&self, topic_id: &str, member_id: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "DELETE FROM topic_member_key WHERE topic_id = $1 AND member_id = $2",
            &[&topic_id, &member_id],
        )
        .await
        .map_err(pg_error)?;
        let n = tx
            .execute(
                "DELETE FROM topic_member WHERE topic_id = $1 AND member_id = $2",
                &[&topic_id, &member_id],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(n > 0)
    }

    async fn topic_members(&self, topic_id: &str) -> StoreResult<Vec<TopicMember>> {
        let rows = self
            .query(
                "SELECT topic_id, member_id, role, joined_at, last_read_at FROM topic_member \
                 WHERE topic_id = $1 ORDER BY joined_at, member_id",
                &[&topic_id],
            )
            .await?;
        Ok(rows.iter().map(member_from_row).collect())
    }

    async fn topic_member(
        &self,
        topic_id: &str,
        member_id: &str,
    ) -> StoreResult<Option<TopicMember>> {
        let rows = self
            .query(
                "SELECT topic_id, member_id, role, joined_at, last_read_at FROM topic_member \
                 WHERE topic_id = $1 AND member_id = $2",
                &[&topic_id, &member_id],
            )
            .await?;
        Ok(rows.first().map(member_from_row))
    }

    async fn topic_mark_read(
        &self,
        topic_id: &str,
        member_id: &str,
        at: i64,
        join: bool,
        max_members: usize,
    ) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        if join
            && join_in(&tx, topic_id, member_id, "member", at, max_members).await? == Joined::Full
        {
            return Ok(false);
        }
        let n = tx
            .execute(
                "UPDATE topic_member SET last_read_at = $3 WHERE topic_id = $1 AND member_id = $2",
                &[&topic_id, &member_id, &at],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(n > 0)
    }

    async fn topic_post(
        &self,
        m: TopicMessage,
        notifications: Vec<Notification>,
    ) -> StoreResult<TopicMessage> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let body_version = i16::from(m.body_version);
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO topic_message ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, \
                     $6, $7, $8, $9, $10, \
                     (SELECT r.id FROM topic_message r WHERE r.id = $11 AND r.topic_id = $2), \
                     $12, $13) RETURNING reply_to_id"
                ),
                &[
                    &m.id,
                    &m.topic_id,
                    &m.mesh_id,
                    &m.sender_member_id,
                    &m.sender_member_pubkey,
                    &m.sender_session_pubkey,
                    &m.sender_name,
                    &m.nonce,
                    &m.ciphertext,
                    &body_version,
                    &m.reply_to_id,
                    &m.queue_id,
                    &m.created_at,
                ],
            )
            .await
            .map_err(pg_error)?;
        for n in &notifications {
            tx.execute(
                "INSERT INTO notification (id, mesh_id, topic_id, message_id, \
                 recipient_member_id, sender_member_id, kind, read_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                &[
                    &n.id,
                    &n.mesh_id,
                    &n.topic_id,
                    &n.message_id,
                    &n.recipient_member_id,
                    &n.sender_member_id,
                    &n.kind,
                    &n.read_at,
                    &n.created_at,
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(TopicMessage {
            reply_to_id: row.get("reply_to_id"),
            ..m
        })
    }

    async fn topic_history(
        &self,
        topic_id: &str,
        before_id: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<TopicMessage>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM topic_message WHERE topic_id = $1 \
                     AND (NOT EXISTS (SELECT 1 FROM topic_message c WHERE c.id = $2 \
                          AND c.topic_id = $1) \
                          OR (created_at, seq) < (SELECT c.created_at, c.seq FROM topic_message c \
                              WHERE c.id = $2 AND c.topic_id = $1)) \
                     ORDER BY created_at DESC, seq DESC LIMIT $3"
                ),
                &[&topic_id, &before_id.unwrap_or(""), &bound(limit)],
            )
            .await?;
        Ok(rows.iter().map(message_from_row).collect())
    }

    async fn topic_messages_after(
        &self,
        topic_id: &str,
        after_id: Option<&str>,
        created_after: i64,
        limit: usize,
    ) -> StoreResult<Vec<TopicMessage>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM topic_message WHERE topic_id = $1 \
                     AND CASE WHEN EXISTS (SELECT 1 FROM topic_message c WHERE c.id = $2 \
                                           AND c.topic_id = $1) \
                         THEN (created_at, seq) > (SELECT c.created_at, c.seq \
                               FROM topic_message c WHERE c.id = $2 AND c.topic_id = $1) \
                         ELSE created_at > $3 END \
                     ORDER BY created_at, seq LIMIT $4"
                ),
                &[
                    &topic_id,
                    &after_id.unwrap_or(""),
                    &created_after,
                    &bound(limit),
                ],
            )
            .await?;
        Ok(rows.iter().map(message_from_row).collect())
    }

    async fn topic_unread_counts(
        &self,
        mesh_id: &str,
        member_id: &str,
    ) -> StoreResult<HashMap<String, u64>> {
        let rows = self
            .query(
                "SELECT m.topic_id, count(*) AS n FROM topic_message m \
                 JOIN topic t ON t.id = m.topic_id \
                 LEFT JOIN topic_member tm ON tm.topic_id = m.topic_id AND tm.member_id = $2 \
                 WHERE t.mesh_id = $1 AND m.sender_member_id <> $2 \
                 AND (tm.last_read_at IS NULL OR m.created_at > tm.last_read_at) \
                 GROUP BY m.topic_id",
                &[&mesh_id, &member_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("topic_id"), r.get::<_, i64>("n") as u64))
            .collect())
    }

    async fn topic_key(&self, topic_id: &str, member_id: &str) -> StoreResult<Option<SealedKey>> {
        let rows = self
            .query(
                "SELECT topic_id, member_id, encrypted_key, nonce, sealed_at FROM topic_member_key \
                 WHERE topic_id = $1 AND member_id = $2",
                &[&topic_id, &member_id],
            )
            .await?;
        Ok(rows.first().map(key_from_row))
    }

    async fn topic_claim_key(&self, pubkey: &str, k: SealedKey) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let n = tx
            .execute(
                "UPDATE topic SET encrypted_key_pubkey = $2 WHERE id = $1 \
                 AND encrypted_key_pubkey IS NULL",
                &[&k.topic_id, &pubkey],
            )
            .await
            .map_err(pg_error)?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO topic_member_key (topic_id, member_id, encrypted_key, nonce, sealed_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic_id, member_id) DO UPDATE SET \
             encrypted_key = EXCLUDED.encrypted_key, nonce = EXCLUDED.nonce, \
             sealed_at = EXCLUDED.sealed_at",
            &[
                &k.topic_id,
                &k.member_id,
                &k.encrypted_key,
                &k.nonce,
                &k.sealed_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn topic_unsealed_members(
        &self,
        topic_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<TopicMember>> {
        let rows = self
            .query(
                "SELECT m.topic_id, m.member_id, m.role, m.joined_at, m.last_read_at \
                 FROM topic_member m WHERE m.topic_id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM topic_member_key k WHERE k.topic_id = m.topic_id \
                  AND k.member_id = m.member_id) \
                 ORDER BY m.joined_at, m.member_id LIMIT $2",
                &[&topic_id, &bound(limit)],
            )
            .await?;
        Ok(rows.iter().map(member_from_row).collect())
    }

    async fn topic_seal(&self, k: SealedKey, overwrite: bool) -> StoreResult<Sealed> {
        let sql = if overwrite {
            "INSERT INTO topic_member_key (topic_id, member_id, encrypted_key, nonce, sealed_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic_id, member_id) DO UPDATE SET \
             encrypted_key = EXCLUDED.encrypted_key, nonce = EXCLUDED.nonce, \
             sealed_at = EXCLUDED.sealed_at"
        } else {
            "INSERT INTO topic_member_key (topic_id, member_id, encrypted_key, nonce, sealed_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic_id, member_id) DO NOTHING"
        };
        let n = self
            .execute(
                sql,
                &[
                    &k.topic_id,
                    &k.member_id,
                    &k.encrypted_key,
                    &k.nonce,
                    &k.sealed_at,
                ],
            )
            .await?;
        Ok(if n > 0 {
            Sealed::Stored
        } else {
            Sealed::AlreadySealed
        })
    }

    async fn notifications(
        &self,
        mesh_id: &str,
        member_id: &str,
        since: i64,
        unread_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<NotificationView>> {
        let rows = self
            .query(
                "SELECT n.id AS n_id, n.mesh_id AS n_mesh_id, n.topic_id AS n_topic_id, \
                 n.message_id AS n_message_id, n.recipient_member_id, \
                 n.sender_member_id AS n_sender_member_id, n.kind, n.read_at, \
                 n.created_at AS n_created_at, t.name AS topic_name, \
                 m.id, m.topic_id, m.mesh_id, m.sender_member_id, m.sender_member_pubkey, \
                 m.sender_session_pubkey, m.sender_name, m.nonce, m.ciphertext, \
                 m.body_version, m.reply_to_id, m.queue_id, m.created_at \
                 FROM notification n JOIN topic t ON t.id = n.topic_id \
                 JOIN topic_message m ON m.id = n.message_id \
                 WHERE n.mesh_id = $1 AND n.recipient_member_id = $2 AND n.created_at > $3 \
                 AND ($4 = false OR n.read_at IS NULL) \
                 ORDER BY m.created_at DESC, m.seq DESC LIMIT $5",
                &[&mesh_id, &member_id, &since, &unread_only, &bound(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NotificationView {
                notification: Notification {
                    id: r.get("n_id"),
                    mesh_id: r.get("n_mesh_id"),
                    topic_id: r.get("n_topic_id"),
                    message_id: r.get("n_message_id"),
                    recipient_member_id: r.get("recipient_member_id"),
                    sender_member_id: r.get("n_sender_member_id"),
                    kind: r.get("kind"),
                    read_at: r.get("read_at"),
                    created_at: r.get("n_created_at"),
                },
                topic_name: r.get("topic_name"),
                message: message_from_row(r),
            })
            .collect())
    }

    async fn notifications_mark_read(
        &self,
        mesh_id: &str,
        member_id: &str,
        which: MarkWhich,
        at: i64,
    ) -> StoreResult<u64> {
        match which {
            MarkWhich::Ids(ids) => {
                self.execute(
                    "UPDATE notification SET read_at = $3 WHERE mesh_id = $1 \
                     AND recipient_member_id = $2 AND read_at IS NULL \
                     AND (id = ANY ($4) OR message_id = ANY ($4))",
                    &[&mesh_id, &member_id, &at, &ids],
                )
                .await
            }
            MarkWhich::All { before } => {
                self.execute(
                    "UPDATE notification SET read_at = $3 WHERE mesh_id = $1 \
                     AND recipient_member_id = $2 AND read_at IS NULL \
                     AND ($4::bigint IS NULL OR created_at < $4)",
                    &[&mesh_id, &member_id, &at, &before],
                )
                .await
            }
        }
    }
}
