//! Simulation clocks (extensions §6): one clock per mesh, persisted.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/clocks.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # The authority lease
//!
//! The clock row carries its lease: `authority` (a replica's instance id) and
//! `lease_until` (epoch ms). [`ClockStore::lease_clocks`] renews the caller's leases and
//! takes running clocks whose lease is free or lapsed, atomically per row (`SET NX PX`
//! semantics, on the durable store). Every tick is a compare-and-set on the stored tick
//! number that also requires the caller's live lease ([`ClockStore::advance_clock`]), so a
//! replica that lost its lease can never advance a clock, and a new authority continues
//! from the stored tick.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// How much simulated time one tick adds.
pub const TICK_SIM_MS: i64 = 60_000;

/// One mesh's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockState {
    pub mesh_id: String,
    /// 1 to 100.
    pub speed: f64,
    pub paused: bool,
    pub tick: i64,
    /// Simulated time, epoch ms.
    pub sim_time: i64,
    /// Real creation time, epoch ms.
    pub started_at: i64,
    /// Real time of the last tick (or of the creation or the last resume), epoch ms: the
    /// next tick is due `60 000 / speed` ms after it.
    pub last_tick_at: i64,
}

impl ClockState {
    /// When the next tick is due (epoch ms).
    pub fn next_tick_at(&self) -> i64 {
        self.last_tick_at + (TICK_SIM_MS as f64 / self.speed.max(1.0)).round() as i64
    }
}

/// Simulation clocks (extensions §6): one clock per mesh, persisted.
#[async_trait]
pub trait ClockStore: Send + Sync + 'static {
    async fn clock(&self, mesh_id: &str) -> StoreResult<Option<ClockState>>;
    /// Creates the mesh's clock (tick 0, `sim_time` = `started_at` = `now_ms`, running)
    /// if it has none; otherwise changes its speed only (a paused clock stays paused).
    async fn set_clock(&self, mesh_id: &str, speed: f64, now_ms: i64) -> StoreResult<ClockState>;
    /// Pauses or resumes; `None` when the mesh has no clock. Resuming a running clock
    /// changes nothing; resuming a paused one restarts its tick interval at `now_ms`.
    async fn set_clock_paused(
        &self,
        mesh_id: &str,
        paused: bool,
        now_ms: i64,
    ) -> StoreResult<Option<ClockState>>;
    /// Renews `holder`'s leases of running clocks and takes running clocks whose lease
    /// is free or lapsed, holding at most `limit`; returns the clocks `holder` holds now.
    async fn lease_clocks(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClockState>>;
    /// Gives up `holder`'s lease of the mesh's clock (paused, or shutting down).
    async fn release_clock(&self, mesh_id: &str, holder: &str) -> StoreResult<()>;
    /// One tick: `tick` + 1, `sim_time` + [`TICK_SIM_MS`], `last_tick_at` = `now_ms`, only
    /// if the clock runs, its tick is `tick` and `holder`'s lease is live at `now_ms`.
    /// `None` when any of that does not hold.
    async fn advance_clock(
        &self,
        mesh_id: &str,
        holder: &str,
        tick: i64,
        now_ms: i64,
    ) -> StoreResult<Option<ClockState>>;
    /// Pauses the clock if `holder` holds its lease (the mesh has no presence left).
    async fn auto_pause_clock(&self, mesh_id: &str, holder: &str) -> StoreResult<bool>;
}

#[derive(Debug)]
struct Row {
    state: ClockState,
    authority: Option<String>,
    lease_until: i64,
}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {
    clocks: Mutex<HashMap<String, Row>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Row>> {
        self.clocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes the `clock` row): the clock
    /// authority leases only stored clocks, so the deleted mesh's clock stops.
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().remove(mesh_id);
    }
}

#[async_trait]
impl ClockStore for MemoryStore {
    async fn clock(&self, mesh_id: &str) -> StoreResult<Option<ClockState>> {
        Ok(self.clocks.lock().get(mesh_id).map(|r| r.state.clone()))
    }

    async fn set_clock(&self, mesh_id: &str, speed: f64, now_ms: i64) -> StoreResult<ClockState> {
        let mut map = self.clocks.lock();
        let row = map.entry(mesh_id.to_string()).or_insert_with(|| Row {
            state: ClockState {
                mesh_id: mesh_id.to_string(),
                speed,
                paused: false,
                tick: 0,
                sim_time: now_ms,
                started_at: now_ms,
                last_tick_at: now_ms,
            },
            authority: None,
            lease_until: 0,
        });
        row.state.speed = speed;
        Ok(row.state.clone())
    }

    async fn set_clock_paused(
        &self,
        mesh_id: &str,
        paused: bool,
        now_ms: i64,
    ) -> StoreResult<Option<ClockState>> {
        let mut map = self.clocks.lock();
        let Some(row) = map.get_mut(mesh_id) else {
            return Ok(None);
        };
        if row.state.paused && !paused {
            row.state.last_tick_at = now_ms;
        }
        row.state.paused = paused;
        Ok(Some(row.state.clone()))
    }

    async fn lease_clocks(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClockState>> {
        let mut map = self.clocks.lock();
        let mut held = 0;
        for row in map.values_mut() {
            if !row.state.paused && row.authority.as_deref() == Some(holder) {
                row.lease_until = now_ms + lease_ms;
                held += 1;
            }
        }
        let mut free: Vec<&mut Row> = map
            .values_mut()
            .filter(|r| {
                !r.state.paused
                    && r.authority.as_deref() != Some(holder)
                    && (r.authority.is_none() || r.lease_until < now_ms)
            })
            .collect();
        free.sort_by(|a, b| a.state.mesh_id.cmp(&b.state.mesh_id));
        for row in free.into_iter().take(limit.saturating_sub(held)) {
            row.authority = Some(holder.to_string());
            row.lease_until = now_ms + lease_ms;
        }
        let mut out: Vec<ClockState> = map
            .values()
            .filter(|r| !r.state.paused && r.authority.as_deref() == Some(holder))
            .map(|r| r.state.clone())
            .collect();
        out.sort_by(|a, b| a.mesh_id.cmp(&b.mesh_id));
        Ok(out)
    }

    async fn release_clock(&self, mesh_id: &str, holder: &str) -> StoreResult<()> {
        let mut map = self.clocks.lock();
        if let Some(row) = map.get_mut(mesh_id)
            && row.authority.as_deref() == Some(holder)
        {
            row.authority = None;
            row.lease_until = 0;
        }
        Ok(())
    }

    async fn advance_clock(
        &self,
        mesh_id: &str,
        holder: &str,
        tick: i64,
        now_ms: i64,
    ) -> StoreResult<Option<ClockState>> {
        let mut map = self.clocks.lock();
        let Some(row) = map.get_mut(mesh_id) else {
            return Ok(None);
        };
        if row.state.paused
            || row.state.tick != tick
            || row.authority.as_deref() != Some(holder)
            || row.lease_until <= now_ms
        {
            return Ok(None);
        }
        row.state.tick += 1;
        row.state.sim_time += TICK_SIM_MS;
        row.state.last_tick_at = now_ms;
        Ok(Some(row.state.clone()))
    }

    async fn auto_pause_clock(&self, mesh_id: &str, holder: &str) -> StoreResult<bool> {
        let mut map = self.clocks.lock();
        match map.get_mut(mesh_id) {
            Some(row) if row.authority.as_deref() == Some(holder) && !row.state.paused => {
                row.state.paused = true;
                row.authority = None;
                row.lease_until = 0;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
