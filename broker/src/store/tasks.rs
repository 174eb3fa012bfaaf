//! Tasks (extensions §3): create, claim exactly once, complete, list.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/tasks.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

/// Tasks (extensions §3): create, claim exactly once, complete, list.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl TaskStore for MemoryStore {}
