//! Scheduled messages and reminders (extensions §5): entries claimed by due time.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/schedule.rs`. Contract suite: `tests/store_contract.rs`.

use async_trait::async_trait;

use super::memory::MemoryStore;

/// Scheduled messages and reminders (extensions §5): entries claimed by due time.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {}

#[async_trait]
impl ScheduleStore for MemoryStore {}
