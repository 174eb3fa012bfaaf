//! The durable state of webhooks (extensions §15): `create_webhook`, `list_webhooks`, `delete_webhook` and the inbound HTTP route.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/webhooks.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl WebhookStore for MemoryStore {}
