//! Streams (extensions §4): the stream names of a mesh (subscriptions are live state in the registry).
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/streams.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

/// Streams (extensions §4): the stream names of a mesh (subscriptions are live state in the registry).
#[async_trait]
pub trait StreamStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl StreamStore for MemoryStore {}
