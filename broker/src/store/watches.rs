//! URL watches (extensions §17): URLs the broker polls for a member, with the last value
//! observed and a per-watch lease, so that each check is made by one replica at a time.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/watches.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Bound to the member**, not to a presence: lists and deletes name (mesh, member), and
//!   a foreign id is treated like an unknown one.
//! - **One checker at a time:** [`WatchStore::watch_claim_due`] hands a due watch to one
//!   caller and leases it until `lease_until`; no other claim returns it before the lease
//!   runs out (so a replica that dies mid-check delays the watch by at most the lease), and
//!   only the lease holder's [`WatchStore::watch_record`] is applied.
//! - **Bounded, exactly:** a new watch beyond `max_per_member` or `max_per_mesh` is refused,
//!   also under concurrent writers.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One stored watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// `w_` + 8 hex.
    pub id: String,
    pub mesh_id: String,
    pub member_id: String,
    pub url: String,
    /// `hash`, `json` or `status`.
    pub mode: String,
    pub extract: Option<String>,
    /// Seconds between checks.
    pub interval_secs: u32,
    /// `change`, `always`, `match:<v>`, `not_match:<v>` (anything else never fires).
    pub notify_on: String,
    pub headers: BTreeMap<String, String>,
    pub label: Option<String>,
    /// The value the last successful check observed; `None` before the baseline.
    pub last_value: Option<String>,
    /// ms epoch of the last successful check.
    pub last_check: Option<i64>,
    /// ms epoch.
    pub created_at: i64,
    /// ms epoch when the next check is due.
    pub next_check_at: i64,
}

/// What a create did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchCreated {
    Created,
    /// The member already holds `max_per_member` watches in the mesh.
    TooManyForMember,
    /// The mesh already holds `max_per_mesh` watches.
    TooManyForMesh,
}

/// URL watches (extensions §17).
#[async_trait]
pub trait WatchStore: Send + Sync + 'static {
    /// Inserts the watch within the bounds (0: no bound).
    async fn watch_create(
        &self,
        watch: Watch,
        max_per_member: usize,
        max_per_mesh: usize,
    ) -> StoreResult<WatchCreated>;

    /// The member's watches in the mesh, oldest first.
    async fn watch_list(&self, mesh_id: &str, member_id: &str) -> StoreResult<Vec<Watch>>;

    /// Deletes the member's watch; the deleted row (`None`: unknown or another member's).
    async fn watch_delete(
        &self,
        mesh_id: &str,
        member_id: &str,
        id: &str,
    ) -> StoreResult<Option<Watch>>;

    /// Leases at most `limit` watches due at `now` (`next_check_at <= now`) and not leased
    /// at `now` to `owner` until `lease_until`, most overdue first.
    async fn watch_claim_due(
        &self,
        now: i64,
        lease_until: i64,
        owner: &str,
        limit: usize,
    ) -> StoreResult<Vec<Watch>>;

    /// The end of `owner`'s check of watch `id`: sets the next due time, and (`Some`) the
    /// observed value and the check time, and releases the lease. `false` (nothing done):
    /// the watch is gone or `owner` no longer holds its lease.
    async fn watch_record(
        &self,
        id: &str,
        owner: &str,
        observed: Option<(String, i64)>,
        next_check_at: i64,
    ) -> StoreResult<bool>;
}

#[derive(Debug, Clone)]
struct Leased {
    watch: Watch,
    lease_owner: Option<String>,
    lease_until: i64,
}

/// What the in-memory backend keeps for this family: watch id → watch and its lease.
#[derive(Debug, Default)]
pub struct MemoryState {
    watches: Mutex<BTreeMap<String, Leased>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Leased>> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A mesh delete: its watches go with it.
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().retain(|_, l| l.watch.mesh_id != mesh_id);
    }

    /// A member delete: its watches go with it (they are only the member's).
    pub(super) fn forget_member(&self, mesh_id: &str, member_id: &str) {
        self.lock()
            .retain(|_, l| !(l.watch.mesh_id == mesh_id && l.watch.member_id == member_id));
    }
}

#[async_trait]
impl WatchStore for MemoryStore {
    async fn watch_create(
        &self,
        watch: Watch,
        max_per_member: usize,
        max_per_mesh: usize,
    ) -> StoreResult<WatchCreated> {
        let mut all = self.watches.lock();
        let in_mesh = all
            .values()
            .filter(|l| l.watch.mesh_id == watch.mesh_id)
            .count();
        let of_member = all
            .values()
            .filter(|l| l.watch.mesh_id == watch.mesh_id && l.watch.member_id == watch.member_id)
            .count();
        if max_per_member > 0 && of_member >= max_per_member {
            return Ok(WatchCreated::TooManyForMember);
        }
        if max_per_mesh > 0 && in_mesh >= max_per_mesh {
            return Ok(WatchCreated::TooManyForMesh);
        }
        all.insert(
            watch.id.clone(),
            Leased {
                watch,
                lease_owner: None,
                lease_until: 0,
            },
        );
        Ok(WatchCreated::Created)
    }

    async fn watch_list(&self, mesh_id: &str, member_id: &str) -> StoreResult<Vec<Watch>> {
        let mut list: Vec<Watch> = self
            .watches
            .lock()
            .values()
            .filter(|l| l.watch.mesh_id == mesh_id && l.watch.member_id == member_id)
            .map(|l| l.watch.clone())
            .collect();
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(list)
    }

    async fn watch_delete(
        &self,
        mesh_id: &str,
        member_id: &str,
        id: &str,
    ) -> StoreResult<Option<Watch>> {
        let mut all = self.watches.lock();
        let mine = all
            .get(id)
            .is_some_and(|l| l.watch.mesh_id == mesh_id && l.watch.member_id == member_id);
        Ok(if mine {
            all.remove(id).map(|l| l.watch)
        } else {
            None
        })
    }

    async fn watch_claim_due(
        &self,
        now: i64,
        lease_until: i64,
        owner: &str,
        limit: usize,
    ) -> StoreResult<Vec<Watch>> {
        let mut all = self.watches.lock();
        let mut due: Vec<&mut Leased> = all
            .values_mut()
            .filter(|l| l.watch.next_check_at <= now && l.lease_until <= now)
            .collect();
        due.sort_by_key(|l| l.watch.next_check_at);
        Ok(due
            .into_iter()
            .take(limit)
            .map(|l| {
                l.lease_owner = Some(owner.to_string());
                l.lease_until = lease_until;
                l.watch.clone()
            })
            .collect())
    }

    async fn watch_record(
        &self,
        id: &str,
        owner: &str,
        observed: Option<(String, i64)>,
        next_check_at: i64,
    ) -> StoreResult<bool> {
        let mut all = self.watches.lock();
        let Some(l) = all.get_mut(id) else {
            return Ok(false);
        };
        if l.lease_owner.as_deref() != Some(owner) {
            return Ok(false);
        }
        if let Some((value, at)) = observed {
            l.watch.last_value = Some(value);
            l.watch.last_check = Some(at);
        }
        l.watch.next_check_at = next_check_at;
        l.lease_owner = None;
        l.lease_until = 0;
        Ok(true)
    }
}
