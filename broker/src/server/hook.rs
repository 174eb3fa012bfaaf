//! `POST /hook/set-status`: Claude Code hooks report a session's status.
//!
//! The route is unauthenticated, so it is a low-trust signal, and bounded everywhere:
//!
//! - **Scope.** A hook names one presence by `pid` and `cwd`: the most recently connected
//!   local presence that announced both, else the live presence of that process the
//!   registry knows on another replica (the hook is routed there over the bus). A hook
//!   without `pid` matches nothing and is kept for nothing (`{ok:true, pending:false}`).
//!   The reply never names the presence.
//! - **What it may set.** `idle` or `working`, never `dnd` (400), so whatever a hook sets a
//!   hook can clear; and it never clears a `dnd` the client set itself.
//! - **Size.** The body is at most `MAX_MESSAGE_BYTES` (413), `cwd` at most
//!   `HOOK_MAX_CWD_BYTES` (400).
//! - **Rate.** Per source address (`HOOK_RATE_PER_SOURCE_PER_MIN`, IPv6 per /64, checked
//!   before the body is read) and per `pid:cwd` (`HOOK_RATE_PER_MIN`), both cluster-wide
//!   through [`Presence::take_send_token`](crate::cluster::presence::Presence::take_send_token)
//!   under hashed, fixed-length bucket keys that expire → 429.
//! - **Pending.** A status for a process not connected yet waits at most `HOOK_PENDING_MS`,
//!   at most `HOOK_PENDING_MAX` of them (cluster-wide in Redis, under hashed fixed-length
//!   keys that expire; per replica on a single node or while Redis fails), and applies only
//!   to that `pid` and `cwd`, when it connects to any replica.

use std::net::{IpAddr, SocketAddr};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{BodyError, HttpResponse, json_response, read_json};
use crate::node::{HookRoute, Node};
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

/// A refusal: counted under `reason`, answered `{ok:false, error}`.
fn refuse(node: &Node, status: StatusCode, reason: &'static str, error: &str) -> HttpResponse {
    node.metrics.reject_hook(reason);
    json_response(status, &json!({"ok": false, "error": error}))
}

/// The rate-limit bucket of a source address: the address itself for IPv4, its /64 for
/// IPv6 (one host usually holds a whole /64), hashed to a fixed length.
fn source_bucket(addr: Option<IpAddr>) -> String {
    let source = match addr.map(|a| a.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".to_string(),
    };
    use sha2::Digest;
    let digest = sha2::Sha256::digest(source.as_bytes());
    format!("hook-src:{}", hex::encode(&digest[..16]))
}

/// Takes a token of `bucket`; `Some` is the answer when the request must stop here.
async fn limit(
    node: &Node,
    bucket: &str,
    per_min: u32,
    reason: &'static str,
) -> Option<HttpResponse> {
    match node
        .presence
        .take_send_token(bucket, per_min, per_min)
        .await
    {
        Ok(true) => None,
        Ok(false) => Some(refuse(
            node,
            StatusCode::TOO_MANY_REQUESTS,
            reason,
            "rate limited",
        )),
        // Fail closed: an unauthenticated route gets no free pass while the limiter is down.
        Err(e) => Some(refuse(
            node,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &e.to_string(),
        )),
    }
}

pub async fn handle(node: &Node, req: Request<Incoming>) -> HttpResponse {
    let peer = req.extensions().get::<SocketAddr>().map(SocketAddr::ip);
    if let Some(resp) = limit(
        node,
        &source_bucket(peer),
        node.config.hook_rate_per_source_per_min,
        "rate_limit_source",
    )
    .await
    {
        return resp;
    }
    let body = match read_json(req, node.config.max_message_bytes).await {
        Ok(v) => v,
        Err(BodyError::TooLarge) => {
            return refuse(
                node,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body too large",
            );
        }
        Err(BodyError::Invalid(m)) => return refuse(node, StatusCode::BAD_REQUEST, "invalid", &m),
    };
    let hook: HookBody = match serde_json::from_value(body) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                node,
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("invalid body: {e}"),
            );
        }
    };
    let max_cwd = node.config.hook_max_cwd_bytes;
    if hook.cwd.len() > max_cwd {
        return refuse(
            node,
            StatusCode::BAD_REQUEST,
            "too_large",
            &format!("cwd longer than {max_cwd} bytes"),
        );
    }
    if hook.cwd.is_empty() {
        return refuse(node, StatusCode::BAD_REQUEST, "invalid", "cwd is empty");
    }
    if hook.status == Status::Dnd {
        return refuse(
            node,
            StatusCode::BAD_REQUEST,
            "dnd",
            "a hook cannot set dnd (only idle or working)",
        );
    }
    let Some(pid) = hook.pid else {
        // Without a pid the hook names no presence: applying it to every session in that
        // cwd would let anyone reach sessions of any mesh.
        return json_response(StatusCode::OK, &json!({"ok": true, "pending": false}));
    };
    let key = Node::hook_key(pid, &hook.cwd);
    if let Some(resp) = limit(
        node,
        &format!("hook:{key}"),
        node.config.hook_rate_per_min,
        "rate_limit_key",
    )
    .await
    {
        return resp;
    }
    // Wherever the process is connected: this replica, or the one the registry names.
    match node.route_hook(pid, &hook.cwd, hook.status).await {
        HookRoute::Local | HookRoute::Routed => json_response(StatusCode::OK, &json!({"ok": true})),
        HookRoute::NotFound => {
            let kept = node
                .remember_pending_hook(pid, &hook.cwd, hook.status)
                .await;
            json_response(StatusCode::OK, &json!({"ok": true, "pending": kept}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn source_buckets_are_per_ipv4_address_and_per_ipv6_64_with_a_fixed_length() {
        assert_ne!(
            source_bucket(ip("127.0.0.1")),
            source_bucket(ip("127.0.0.2"))
        );
        assert_eq!(
            source_bucket(ip("::ffff:127.0.0.1")),
            source_bucket(ip("127.0.0.1"))
        );
        assert_eq!(
            source_bucket(ip("2001:db8:1:2::1")),
            source_bucket(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_bucket(ip("2001:db8:1:2::1")),
            source_bucket(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            source_bucket(ip("2001:db8::1")).len(),
            "hook-src:".len() + 32
        );
    }

    #[test]
    fn hook_keys_have_a_fixed_length_whatever_the_cwd() {
        let long = "x".repeat(60_000);
        assert_eq!(Node::hook_key(1, &long).len(), 32);
        assert_ne!(Node::hook_key(1, "/a"), Node::hook_key(2, "/a"));
        assert_ne!(Node::hook_key(1, "/a"), Node::hook_key(1, "/b"));
    }
}
