//! `POST /hook/<meshId>/<secret>`: an inbound webhook call (extensions §15), adapted to
//! [`crate::service::webhooks::deliver`].
//!
//! | outcome | status | body |
//! |---|---|---|
//! | body over `WEBHOOK_MAX_BODY_BYTES` (read no further) | 413 | `{ok:false, error:"payload too large"}` |
//! | not JSON | 400 | `{ok:false, error:"invalid JSON"}` |
//! | no webhook of that mesh with that secret | 401 | `{ok:false, error:"unauthorized"}` |
//! | JSON but not an object or an array | 400 | `{ok:false, error:"invalid JSON body"}` |
//! | the webhook's `WEBHOOK_RATE_PER_MIN` is spent (cluster-wide) | 429 | `{ok:false, error:"rate limited"}` |
//! | a backend is down | 503 | `{ok:false, error:"unavailable"}` |
//! | delivered | 200 | `{ok:true, delivered:<live presences of the mesh>}` |

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};

use super::{HttpResponse, json_response};
use crate::node::Node;
use crate::service::ServiceCtx;
use crate::service::webhooks::{self, InboundError};

/// Whether `path` is an inbound webhook path (`/hook/<meshId>/<secret>`, neither empty).
pub fn serves(path: &str) -> bool {
    split(path).is_some()
}

fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/hook/")?;
    let (mesh, secret) = rest.split_once('/')?;
    (!mesh.is_empty() && !secret.is_empty() && !secret.contains('/')).then_some((mesh, secret))
}

fn refuse(node: &Node, status: StatusCode, reason: &'static str, error: &str) -> HttpResponse {
    node.metrics.refuse_webhook(reason);
    json_response(status, &json!({"ok": false, "error": error}))
}

pub async fn handle(node: &std::sync::Arc<Node>, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_string();
    let Some((mesh_id, secret)) = split(&path) else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    };
    let limit = node.config.webhook_max_body_bytes;
    let bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return refuse(
                node,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "payload too large",
            );
        }
        Err(_) => return refuse(node, StatusCode::BAD_REQUEST, "bad_json", "invalid JSON"),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return refuse(node, StatusCode::BAD_REQUEST, "bad_json", "invalid JSON");
    };
    // `deliver` counts its own refusals.
    match webhooks::deliver(&ServiceCtx::new(node), mesh_id, secret, body).await {
        Ok(delivered) => {
            json_response(StatusCode::OK, &json!({"ok": true, "delivered": delivered}))
        }
        Err(e) => {
            let (status, error) = match e {
                InboundError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
                InboundError::NotObject => (StatusCode::BAD_REQUEST, "invalid JSON body"),
                InboundError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate limited"),
                InboundError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            json_response(status, &json!({"ok": false, "error": error}))
        }
    }
}
