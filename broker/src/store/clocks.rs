//! Simulation clocks (extensions §6): one clock per mesh, persisted.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/clocks.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

/// Simulation clocks (extensions §6): one clock per mesh, persisted.
#[async_trait]
pub trait ClockStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl ClockStore for MemoryStore {}
