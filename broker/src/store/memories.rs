//! Memories (extensions §2): shared notes with full-text search.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/memories.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

/// Memories (extensions §2): shared notes with full-text search.
#[async_trait]
pub trait MemoriesStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl MemoriesStore for MemoryStore {}
