//! Delivery status (extensions §7): a sent message's recipients and delivery.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/msg_status.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

/// Delivery status (extensions §7): a sent message's recipients and delivery.
#[async_trait]
pub trait MessageStatusStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl MessageStatusStore for MemoryStore {}
