//! The operations of simulation clocks (extensions §6): `set_clock`, `pause_clock`, `resume_clock`, `get_clock`, without a transport.
//!
//! The verbs only change the stored clock; the replica holding the mesh's clock lease
//! (the `clock_authority` worker) reads it at least every [`AUTHORITY_POLL`] and emits the
//! ticks ([`tick`]). Every replica answers `get_clock` from the store, so all answer the
//! same time.

use std::time::Duration;

use tracing::{debug, warn};

use super::schedule::derived_id;
use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::ids;
use crate::protocol;
use crate::protocol::ext::clocks::{ClockStatus, TickData, TickPush};
use crate::store::clocks::{ClockState, TICK_SIM_MS};

/// Longest time between two looks of the authority at the clocks it holds (a change made
/// on another replica takes effect within it).
pub const AUTHORITY_POLL: Duration = Duration::from_millis(250);

/// Why a verb failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockError {
    /// `pause_clock`/`resume_clock` on a mesh without a clock.
    NoClock,
    Unavailable(String),
}

impl ClockError {
    pub fn code(&self) -> &'static str {
        match self {
            ClockError::NoClock => "no_clock",
            ClockError::Unavailable(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ClockError::NoClock => "No clock running for this mesh".into(),
            ClockError::Unavailable(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for ClockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ClockError {}

fn unavailable(e: impl std::fmt::Display) -> ClockError {
    ClockError::Unavailable(e.to_string())
}

/// The `clock_status` of `state`; without a clock the reference's answer (`speed:0,
/// paused:true, tick:0`, both times now).
pub fn status(state: Option<&ClockState>, now_ms: i64, req_id: Option<&str>) -> ClockStatus {
    match state {
        Some(c) => ClockStatus {
            speed: c.speed,
            paused: c.paused,
            tick: c.tick,
            sim_time: ids::iso8601_ms(c.sim_time),
            started_at: ids::iso8601_ms(c.started_at),
            req_id: req_id.map(str::to_string),
        },
        None => ClockStatus {
            speed: 0.0,
            paused: true,
            tick: 0,
            sim_time: ids::iso8601_ms(now_ms),
            started_at: ids::iso8601_ms(now_ms),
            req_id: req_id.map(str::to_string),
        },
    }
}

/// `set_clock`: creates the mesh's clock (running, tick 0) or changes its speed (already
/// clamped by the caller, see [`protocol::ext::clocks::clamp_speed`]).
pub async fn set(ctx: &ServiceCtx, p: &Principal, speed: f64) -> Result<ClockState, ClockError> {
    ctx.store()
        .set_clock(&p.mesh.id, speed, ids::now_ms())
        .await
        .map_err(unavailable)
}

/// `pause_clock` / `resume_clock`.
pub async fn set_paused(
    ctx: &ServiceCtx,
    p: &Principal,
    paused: bool,
) -> Result<ClockState, ClockError> {
    ctx.store()
        .set_clock_paused(&p.mesh.id, paused, ids::now_ms())
        .await
        .map_err(unavailable)?
        .ok_or(ClockError::NoClock)
}

/// `get_clock`.
pub async fn get(ctx: &ServiceCtx, p: &Principal) -> Result<Option<ClockState>, ClockError> {
    ctx.store().clock(&p.mesh.id).await.map_err(unavailable)
}

/// The `messageId` of tick `tick` of the clock created at `started_at` in `mesh_id`: a tick
/// pushed again after a failover carries the same id.
pub fn tick_message_id(mesh_id: &str, started_at: i64, tick: i64) -> String {
    derived_id(&["tick", mesh_id, &started_at.to_string(), &tick.to_string()])
}

/// What one due tick came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticked {
    /// Pushed and committed.
    Ticked,
    /// The mesh has no presence (live or in grace) left: the clock is paused.
    AutoPaused,
    /// The lease was lost or the clock changed (paused, ticked elsewhere): nothing committed.
    Lost,
    /// A backend failed: try again at the next look.
    Failed,
}

/// Emits the next tick of `clock` (held by `holder`): the push goes to every presence of
/// the mesh, then the tick is committed with a compare-and-set on the tick number under
/// the lease. A crash between the two pushes the same tick (same `messageId`) again from
/// the next authority; a lost lease commits nothing.
pub async fn tick(ctx: &ServiceCtx, holder: &str, clock: &ClockState, now_ms: i64) -> Ticked {
    let records = match ctx.presence().list(&clock.mesh_id).await {
        Ok(r) => r,
        Err(e) => {
            // Per tick and clock: an outage would flood the log; readiness shows it.
            debug!(error = %e, "presence unavailable; clock tick postponed");
            return Ticked::Failed;
        }
    };
    if records.is_empty() {
        return match ctx.store().auto_pause_clock(&clock.mesh_id, holder).await {
            Ok(_) => Ticked::AutoPaused,
            Err(e) => {
                warn!(error = %e, "clock auto-pause failed");
                Ticked::Failed
            }
        };
    }
    let next = clock.tick + 1;
    let data = TickData {
        tick: next,
        sim_time: ids::iso8601_ms(clock.sim_time + TICK_SIM_MS),
        speed: clock.speed,
    };
    let message_id = tick_message_id(&clock.mesh_id, clock.started_at, next);
    let frame = protocol::encode(&TickPush::new(&clock.mesh_id, message_id, data, now_ms));
    let event = MeshEvent::Deliver {
        presence_ids: records
            .into_iter()
            .map(|r| r.presence_id)
            .collect::<Vec<_>>()
            .into(),
        priority: None,
        frame,
        trace: None,
    };
    if let Err(e) = ctx.publish(&clock.mesh_id, event).await {
        debug!(error = %e, "clock tick not published; retried");
        return Ticked::Failed;
    }
    match ctx
        .store()
        .advance_clock(&clock.mesh_id, holder, clock.tick, now_ms)
        .await
    {
        Ok(Some(_)) => {
            ctx.metrics().clock_ticks.inc();
            Ticked::Ticked
        }
        Ok(None) => {
            debug!(
                mesh_id = clock.mesh_id,
                "clock tick not committed: lease lost or clock changed"
            );
            Ticked::Lost
        }
        Err(e) => {
            warn!(error = %e, "clock tick not committed");
            Ticked::Failed
        }
    }
}
