//! `POST /hook/set-status`: Claude Code hooks report a session's status. Unauthenticated,
//! so it is a low-trust signal: it can only change a status, never clears `dnd`, and is
//! rate-limited per `pid:cwd`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{BodyError, HttpResponse, json_response, read_json};
use crate::hub::Control;
use crate::node::Node;
use crate::protocol::Status;

#[derive(Deserialize)]
struct HookBody {
    cwd: String,
    #[serde(default)]
    pid: Option<i64>,
    status: Status,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted for compatibility; pid and cwd identify the session"
    )]
    session_id: Option<String>,
}

pub async fn handle(node: &Node, req: Request<Incoming>) -> HttpResponse {
    let body = match read_json(req, node.config.max_message_bytes).await {
        Ok(v) => v,
        Err(BodyError::TooLarge) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"ok": false, "error": "body too large"}),
            );
        }
        Err(BodyError::Invalid(m)) => {
            return json_response(StatusCode::BAD_REQUEST, &json!({"ok": false, "error": m}));
        }
    };
    let hook: HookBody = match serde_json::from_value(body) {
        Ok(h) => h,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"ok": false, "error": format!("invalid body: {e}")}),
            );
        }
    };
    let key = Node::hook_key(hook.pid, &hook.cwd);
    let per_min = node.config.hook_rate_per_min;
    match node
        .presence
        .take_send_token(&format!("hook:{key}"), per_min, per_min)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"ok": false, "error": "rate limited"}),
            );
        }
        Err(e) => {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ok": false, "error": e.to_string()}),
            );
        }
    }
    let sessions = node.hub.find_by_process(hook.pid, &hook.cwd);
    match sessions.first() {
        Some(h) => {
            for h in &sessions {
                let _ = h.control.send(Control::HookStatus(hook.status));
            }
            json_response(
                StatusCode::OK,
                &json!({"ok": true, "presence_id": h.presence_id}),
            )
        }
        None => {
            node.remember_pending_hook(hook.pid, &hook.cwd, hook.status);
            json_response(StatusCode::OK, &json!({"ok": true, "pending": true}))
        }
    }
}
