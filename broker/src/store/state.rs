//! Shared state (extensions §1): the mesh-wide key → JSON value map.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/state.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

/// Shared state (extensions §1): the mesh-wide key → JSON value map.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl StateStore for MemoryStore {}
