//! The WebSocket adapter of simulation clocks (extensions §6): `set_clock`, `pause_clock`, `resume_clock`, `get_clock`.
//!
//! Every verb answers `clock_status` (§0.2); `pause_clock`/`resume_clock` without a clock
//! answer `error{code:"no_clock"}`. `_reqId` is echoed when the frame carried one.

use crate::ids;
use crate::protocol;
use crate::protocol::ext::clocks::{ClockFrame, clamp_speed};
use crate::service::clocks;
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::clocks::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: ClockFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let result = match frame {
        ClockFrame::SetClock { speed } => clocks::set(svc, p, clamp_speed(&speed)).await.map(Some),
        ClockFrame::PauseClock {} => clocks::set_paused(svc, p, true).await.map(Some),
        ClockFrame::ResumeClock {} => clocks::set_paused(svc, p, false).await.map(Some),
        ClockFrame::GetClock {} => clocks::get(svc, p).await,
    };
    match result {
        Ok(state) => s.reply(protocol::encode(&clocks::status(
            state.as_ref(),
            ids::now_ms(),
            req_id,
        ))),
        Err(e) => s.reply_error(e.code(), &e.message(), req_id),
    }
}
