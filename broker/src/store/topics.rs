//! The durable state of topics (extensions §9): `topic_create`, `topic_list`, `topic_join`, `topic_leave`, `topic_members`, `topic_history`, `topic_mark_read`, and `#topic` posts.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/topics.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

#[async_trait]
pub trait TopicStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl TopicStore for MemoryStore {}
