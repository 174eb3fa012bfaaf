//! The durable state of URL watches (extensions §17): `watch`, `unwatch`, `watch_list`.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/watches.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

#[async_trait]
pub trait WatchStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl WatchStore for MemoryStore {}
