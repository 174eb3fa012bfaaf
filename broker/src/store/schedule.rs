//! Scheduled messages and reminders (extensions §5): entries claimed by due time.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/schedule.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Limit:** [`ScheduleStore::create_scheduled`] refuses an entry past `max_active`
//!   active entries of its member atomically (concurrent creations on several replicas
//!   cannot overshoot).
//! - **One claimer:** [`ScheduleStore::claim_due`] hands each due entry to one claimer at a
//!   time: while a [`DueClaim`] holds an entry, no other claim returns it and a cancel of it
//!   waits for (or is ordered after) the claim's end.
//! - **Atomic outcome:** [`DueClaim::commit`] records every entry's outcome (fired: a
//!   one-shot done, a cron advanced; or retry later) at once. A claim dropped without a
//!   commit (the replica died mid-fire) records nothing: the entries are due again with the
//!   same `fired_count`, so the next fire derives the same message id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::memory::MemoryStore;
use super::{StoreError, StoreResult};

/// One scheduled message (table `scheduled_message`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduledEntry {
    /// A UUID.
    pub id: String,
    pub mesh_id: String,
    /// The presence that scheduled it (kept for the record; firing does not need it).
    pub presence_id: String,
    /// The member it is attributed to.
    pub member_id: String,
    /// The target spec, a session key of the member's own already rewritten to its member key.
    pub to: String,
    /// The plaintext.
    pub message: String,
    /// Epoch ms of the next fire.
    pub deliver_at: i64,
    pub cron: Option<String>,
    pub subtype: Option<String>,
    pub fired_count: i64,
    pub cancelled: bool,
    /// Set when a one-shot fired (or a cron has no next fire).
    pub fired_at: Option<i64>,
    pub created_at: i64,
}

impl ScheduledEntry {
    /// Neither cancelled nor done.
    pub fn is_active(&self) -> bool {
        !self.cancelled && self.fired_at.is_none()
    }
}

/// What happened to one claimed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    /// It fired (or was refused for good): `fired_count` + 1; `next: Some` moves a cron to
    /// its next fire, `None` marks the entry done (`fired_at = at`).
    Fired { at: i64, next: Option<i64> },
    /// It could not fire now (a backend was down, the sender was rate limited): claim it
    /// again at `retry_at`, same `fired_count`.
    Retry { retry_at: i64 },
}

/// Due entries held by one claimer until [`DueClaim::commit`] (or its drop, which records
/// nothing).
pub struct DueClaim<'a> {
    entries: Vec<ScheduledEntry>,
    backend: Box<dyn ClaimBackend + 'a>,
}

impl std::fmt::Debug for DueClaim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueClaim")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl<'a> DueClaim<'a> {
    pub(crate) fn new(entries: Vec<ScheduledEntry>, backend: Box<dyn ClaimBackend + 'a>) -> Self {
        DueClaim { entries, backend }
    }

    /// The claimed entries, earliest due first.
    pub fn entries(&self) -> &[ScheduledEntry] {
        &self.entries
    }

    /// Records the outcomes (by entry id; entries not named are released unchanged) and
    /// ends the claim, in one transaction.
    pub async fn commit(self, outcomes: Vec<(String, FireOutcome)>) -> StoreResult<()> {
        let outcomes: Vec<(String, FireOutcome)> = outcomes
            .into_iter()
            .filter(|(id, _)| self.entries.iter().any(|e| &e.id == id))
            .collect();
        self.backend.commit(outcomes).await
    }
}

/// What a backend keeps for an open claim (a transaction, or the claimed marks in memory).
/// Dropping it without [`ClaimBackend::commit`] must release the entries unchanged.
#[async_trait]
pub(crate) trait ClaimBackend: Send {
    /// `outcomes` name claimed entries only.
    async fn commit(self: Box<Self>, outcomes: Vec<(String, FireOutcome)>) -> StoreResult<()>;
}

/// Scheduled messages and reminders (extensions §5): entries claimed by due time.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Stores a new entry; [`StoreError::Conflict`] when its member already has
    /// `max_active` active entries.
    async fn create_scheduled(&self, entry: ScheduledEntry, max_active: usize) -> StoreResult<()>;
    /// The member's active entries, oldest first.
    async fn list_scheduled(
        &self,
        mesh_id: &str,
        member_id: &str,
    ) -> StoreResult<Vec<ScheduledEntry>>;
    /// Cancels an active entry of this member; `false` when there is none with that id.
    async fn cancel_scheduled(&self, mesh_id: &str, member_id: &str, id: &str)
    -> StoreResult<bool>;
    /// Claims up to `limit` active entries due at `now_ms` (earliest first) that no other
    /// claim holds.
    async fn claim_due(&self, now_ms: i64, limit: usize) -> StoreResult<DueClaim<'_>>;
}

/// The error of a creation past the limit.
pub fn limit_error() -> StoreError {
    StoreError::Conflict("too many active scheduled messages".into())
}

#[derive(Debug)]
struct Slot {
    entry: ScheduledEntry,
    /// When a retry may claim it again (its `deliver_at` until then).
    attempt_at: i64,
    claimed: bool,
}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {
    entries: Arc<Mutex<HashMap<String, Slot>>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().retain(|_, slot| slot.entry.mesh_id != mesh_id);
    }

    /// Forgets a deleted member's entries (`MemoryStore::delete_member`, as the PostgreSQL
    /// delete removes its `scheduled_message` rows): they would fire as a member that no
    /// longer exists. A claim holding one of them finds it gone and skips it.
    pub(super) fn forget_member(&self, mesh_id: &str, member_id: &str) {
        self.lock()
            .retain(|_, slot| slot.entry.mesh_id != mesh_id || slot.entry.member_id != member_id);
    }
}

struct MemoryClaim {
    entries: Arc<Mutex<HashMap<String, Slot>>>,
    /// The ids it holds.
    claimed: Vec<String>,
    done: bool,
}

impl MemoryClaim {
    fn release(&self, outcomes: &[(String, FireOutcome)]) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.claimed {
            if let Some(slot) = map.get_mut(id) {
                slot.claimed = false;
            }
        }
        for (id, outcome) in outcomes {
            let Some(slot) = map.get_mut(id) else {
                continue;
            };
            match *outcome {
                FireOutcome::Fired { at, next } => {
                    slot.entry.fired_count += 1;
                    match next {
                        Some(next) => {
                            slot.entry.deliver_at = next;
                            slot.attempt_at = next;
                        }
                        None => slot.entry.fired_at = Some(at),
                    }
                }
                FireOutcome::Retry { retry_at } => slot.attempt_at = retry_at,
            }
        }
    }
}

impl Drop for MemoryClaim {
    fn drop(&mut self) {
        if !self.done {
            self.release(&[]);
        }
    }
}

#[async_trait]
impl ClaimBackend for MemoryClaim {
    async fn commit(mut self: Box<Self>, outcomes: Vec<(String, FireOutcome)>) -> StoreResult<()> {
        self.release(&outcomes);
        self.done = true;
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for MemoryStore {
    async fn create_scheduled(&self, entry: ScheduledEntry, max_active: usize) -> StoreResult<()> {
        let mut map = self.schedule.lock();
        let active = map
            .values()
            .filter(|s| {
                s.entry.mesh_id == entry.mesh_id
                    && s.entry.member_id == entry.member_id
                    && s.entry.is_active()
            })
            .count();
        if active >= max_active {
            return Err(limit_error());
        }
        if map.contains_key(&entry.id) {
            return Err(StoreError::Conflict("already exists".into()));
        }
        let attempt_at = entry.deliver_at;
        map.insert(
            entry.id.clone(),
            Slot {
                entry,
                attempt_at,
                claimed: false,
            },
        );
        Ok(())
    }

    async fn list_scheduled(
        &self,
        mesh_id: &str,
        member_id: &str,
    ) -> StoreResult<Vec<ScheduledEntry>> {
        let map = self.schedule.lock();
        let mut out: Vec<ScheduledEntry> = map
            .values()
            .map(|s| &s.entry)
            .filter(|e| e.mesh_id == mesh_id && e.member_id == member_id && e.is_active())
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn cancel_scheduled(
        &self,
        mesh_id: &str,
        member_id: &str,
        id: &str,
    ) -> StoreResult<bool> {
        let mut map = self.schedule.lock();
        match map.get_mut(id) {
            Some(s)
                if s.entry.mesh_id == mesh_id
                    && s.entry.member_id == member_id
                    && s.entry.is_active() =>
            {
                s.entry.cancelled = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn claim_due(&self, now_ms: i64, limit: usize) -> StoreResult<DueClaim<'_>> {
        let mut map = self.schedule.lock();
        let mut due: Vec<&mut Slot> = map
            .values_mut()
            .filter(|s| !s.claimed && s.entry.is_active() && s.attempt_at <= now_ms)
            .collect();
        due.sort_by(|a, b| (a.attempt_at, &a.entry.id).cmp(&(b.attempt_at, &b.entry.id)));
        let claimed: Vec<ScheduledEntry> = due
            .into_iter()
            .take(limit)
            .map(|s| {
                s.claimed = true;
                s.entry.clone()
            })
            .collect();
        let backend = MemoryClaim {
            entries: self.schedule.entries.clone(),
            claimed: claimed.iter().map(|e| e.id.clone()).collect(),
            done: false,
        };
        Ok(DueClaim::new(claimed, Box::new(backend)))
    }
}
