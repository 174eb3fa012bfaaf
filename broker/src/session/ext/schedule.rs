//! The WebSocket adapter of scheduled messages and reminders (extensions §5): `schedule`, `list_scheduled`, `cancel_scheduled`.
//!
//! Every accepted request gets its typed reply (§0.2): `scheduled_ack`, `scheduled_list`,
//! `cancel_scheduled_ack` (`ok:false` for an id that is not the caller's member's active
//! entry). Refusals (`invalid_cron`, `too_many_scheduled`, `invalid_schedule`, `internal`)
//! are `error` frames; `_reqId` is echoed when the frame carried one.

use crate::protocol;
use crate::protocol::ext::schedule::{
    CancelScheduledAck, ScheduleFrame, ScheduledAck, ScheduledList,
};
use crate::service::schedule;
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::schedule::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: ScheduleFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let req = req_id.map(str::to_string);
    match frame {
        ScheduleFrame::Schedule(body) => match schedule::schedule(svc, p, body).await {
            Ok(done) => s.reply(protocol::encode(&ScheduledAck {
                scheduled_id: done.id,
                deliver_at: done.deliver_at,
                cron: done.cron,
                req_id: req,
            })),
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
        ScheduleFrame::ListScheduled {} => match schedule::list(svc, p).await {
            Ok(messages) => s.reply(protocol::encode(&ScheduledList {
                messages,
                req_id: req,
            })),
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
        ScheduleFrame::CancelScheduled { scheduled_id } => {
            match schedule::cancel(svc, p, &scheduled_id).await {
                Ok(ok) => s.reply(protocol::encode(&CancelScheduledAck {
                    scheduled_id,
                    ok,
                    req_id: req,
                })),
                Err(e) => s.reply_error(e.code(), &e.message(), req_id),
            }
        }
    }
}
