//! The WebSocket adapter of webhooks (extensions §15): `create_webhook`, `list_webhooks`,
//! `delete_webhook`. Every reply echoes `_reqId`: `webhook_ack`, `webhook_list`, or an
//! `error` (`invalid_webhook`, `webhook_exists`, `too_many_webhooks`, `forbidden`,
//! `internal`). The inbound HTTP route is `server/webhook_in.rs`.

use crate::protocol;
use crate::protocol::ext::webhooks::{WebhookAck, WebhookFrame, WebhookList};
use crate::service::webhooks;
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::webhooks::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: WebhookFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let req_id_owned = req_id.map(str::to_string);
    match frame {
        WebhookFrame::CreateWebhook { name } => match webhooks::create(svc, p, &name).await {
            Ok(c) => s.reply(protocol::encode(&WebhookAck {
                name: c.name,
                url: c.url,
                secret: c.secret,
                req_id: req_id_owned,
            })),
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
        WebhookFrame::ListWebhooks {} => match webhooks::list(svc, p).await {
            Ok(hooks) => s.reply(protocol::encode(&WebhookList {
                webhooks: hooks,
                req_id: req_id_owned,
            })),
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
        WebhookFrame::DeleteWebhook { name } => match webhooks::delete(svc, p, &name).await {
            Ok(()) => s.reply(protocol::encode(&WebhookAck {
                name,
                url: String::new(),
                secret: String::new(),
                req_id: req_id_owned,
            })),
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
    }
}
