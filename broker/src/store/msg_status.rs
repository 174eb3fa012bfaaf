//! Delivery status (extensions §7): a sent message's target and delivery.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/msg_status.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # What is recorded where
//!
//! Nothing is written on the send path of a direct message: while it waits it is its
//! queue row. When a `client_ack` confirms it, the same statement that removes the queue
//! row records it here as delivered ([`QueueStore::mark_delivered`](super::QueueStore::mark_delivered)
//! does both). A broadcast or group message never enters the queue: its fan-out is recorded
//! here ([`MessageStatusStore::record_fanout`]). Records older than the queue TTL are swept
//! ([`MessageStatusStore::sweep_message_status`]), like undelivered queue rows.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::memory::MemoryStore;
use super::{QueuedMessage, StoreResult};

/// Whom a sent message was addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentTarget {
    /// A direct message to this member (to one of its sessions when `session_key` is set:
    /// the key it was addressed to; else it was addressed to the member's own key).
    Direct {
        member_id: String,
        session_key: Option<String>,
    },
    /// A broadcast (`*`, `@all`) or group (`@name`) message: the target spec as sent.
    Fanout { spec: String },
}

/// What the store knows of one sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub id: String,
    pub mesh_id: String,
    pub sender_member_id: String,
    pub target: SentTarget,
    pub created_at: i64,
    /// Direct: when the recipient confirmed it. Fan-out: when it was handed to the
    /// fan-out, if any presence was to receive it.
    pub delivered_at: Option<i64>,
}

impl SentMessage {
    /// The status record of a direct message confirmed at `at`.
    pub fn confirmed(m: &QueuedMessage, at: i64) -> Self {
        SentMessage {
            id: m.id.clone(),
            mesh_id: m.mesh_id.clone(),
            sender_member_id: m.sender_member_id.clone(),
            target: SentTarget::Direct {
                member_id: m.target_member_id.clone(),
                session_key: m.target_session_key.clone(),
            },
            created_at: m.created_at,
            delivered_at: Some(at),
        }
    }

    /// The status of a direct message still in the queue.
    pub fn waiting(m: &QueuedMessage) -> Self {
        SentMessage {
            delivered_at: None,
            ..Self::confirmed(m, 0)
        }
    }
}

/// Most candidates a lookup returns: two already make a prefix ambiguous; the rest only
/// make the count in the error more useful.
pub const MAX_MATCHES: usize = 16;

/// Delivery status (extensions §7): a sent message's target and delivery.
#[async_trait]
pub trait MessageStatusStore: Send + Sync + 'static {
    /// Records a broadcast or group message as fanned out (idempotent by id).
    async fn record_fanout(&self, message: SentMessage) -> StoreResult<()>;
    /// The mesh's messages whose id starts with `prefix` (a whole id is its own prefix), at
    /// most `limit`: undelivered direct messages from the queue, confirmed direct messages
    /// and fan-outs from the status records. No order is promised.
    async fn find_sent(
        &self,
        mesh_id: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<SentMessage>>;
    /// Removes status records created before `before_ms`; returns how many.
    async fn sweep_message_status(&self, before_ms: i64) -> StoreResult<u64>;
}

/// What the in-memory backend keeps for this family: the status records, by mesh and id.
#[derive(Debug, Default)]
pub struct MemoryState {
    records: Mutex<BTreeMap<(String, String), SentMessage>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), SentMessage>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().retain(|(mesh, _), _| mesh != mesh_id);
    }

    /// Records a confirmed direct message (called by the memory queue's `mark_delivered`).
    pub(super) fn record(&self, message: SentMessage) {
        self.lock()
            .insert((message.mesh_id.clone(), message.id.clone()), message);
    }
}

#[async_trait]
impl MessageStatusStore for MemoryStore {
    async fn record_fanout(&self, message: SentMessage) -> StoreResult<()> {
        self.msg_status.record(message);
        Ok(())
    }

    async fn find_sent(
        &self,
        mesh_id: &str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<SentMessage>> {
        let mut found: Vec<SentMessage> = self
            .queued_with_prefix(mesh_id, prefix, limit)
            .iter()
            .map(SentMessage::waiting)
            .collect();
        let records = self.msg_status.lock();
        let from = (mesh_id.to_string(), prefix.to_string());
        found.extend(
            records
                .range(from..)
                .take_while(|((mesh, id), _)| mesh == mesh_id && id.starts_with(prefix))
                .map(|(_, m)| m.clone())
                .take(limit.saturating_sub(found.len())),
        );
        Ok(found)
    }

    async fn sweep_message_status(&self, before_ms: i64) -> StoreResult<u64> {
        let mut records = self.msg_status.lock();
        let before = records.len();
        records.retain(|_, m| m.created_at >= before_ms);
        Ok((before - records.len()) as u64)
    }
}
