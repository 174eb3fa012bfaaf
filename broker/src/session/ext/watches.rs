//! The WebSocket adapter of URL watches (extensions §17): `watch`, `unwatch`, `watch_list`.
//! Every reply echoes `_reqId` (the CLI matches these strictly): `watch_ack`,
//! `watch_list_result`, or `error{code:"invalid_args"}` (`internal` when a backend failed).

use crate::protocol;
use crate::protocol::ext::watches::{WatchAck, WatchFrame, WatchListResult};
use crate::service::watches::{self, WatchRequest};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::watches::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: WatchFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let req_id_owned = req_id.map(str::to_string);
    match frame {
        WatchFrame::Watch {
            url,
            mode,
            extract,
            interval,
            notify_on,
            headers,
            label,
        } => {
            let req = WatchRequest {
                url,
                mode,
                extract,
                interval,
                notify_on,
                headers,
                label,
            };
            match watches::watch(svc, p, req).await {
                Ok(w) => s.reply(protocol::encode(&WatchAck {
                    watch_id: w.id.clone(),
                    id: w.id,
                    url: w.url,
                    mode: w.mode,
                    interval: w.interval_secs,
                    req_id: req_id_owned,
                })),
                Err(e) => s.reply_error(e.code(), &e.message(), req_id),
            }
        }
        WatchFrame::Unwatch { watch_id } => match watches::unwatch(svc, p, &watch_id).await {
            Ok(w) => {
                let (url, mode) = w.map(|w| (w.url, w.mode)).unwrap_or_default();
                s.reply(protocol::encode(&WatchAck {
                    id: watch_id.clone(),
                    watch_id,
                    url,
                    mode,
                    interval: 0,
                    req_id: req_id_owned,
                }));
            }
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
        WatchFrame::WatchList {} => match watches::list(svc, p).await {
            Ok(list) => s.reply(protocol::encode(&WatchListResult {
                watches: list.iter().map(watches::listing).collect(),
                req_id: req_id_owned,
            })),
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
    }
}
