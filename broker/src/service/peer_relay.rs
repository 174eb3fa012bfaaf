//! The peer file and directory relay (extensions §13), and the pending-request machinery it
//! shares with the MCP calls of §14, without a transport.
//!
//! A request names a target key; the broker finds the target's live presence, opens a
//! pending entry in the registry (`cluster::mcp_registry`: broker id → requester presence,
//! target presence, the requester's `_reqId`, deadline), and routes the forward to the
//! target's presence on whichever replica holds it (`MeshEvent::Deliver`). The forward's
//! `_reqId` is the broker id, which the target copies into its response: the response is
//! accepted only from the presence it was sent to and only while the entry is open, and goes
//! to the requester's presence only, wherever that is by then. Nothing is stored.
//!
//! Exactly one of three things resolves an entry (the registry's `take` is atomic): the
//! target's answer, the timeout (a timer on the requester's replica, bounded by
//! `MAX_PENDING_PEER_REQUESTS_PER_REPLICA`), or the target going away (its socket closes or
//! its presence ends, on whichever replica notices). The requester's frame queue never
//! waits on any of them (§0.4).
//!
//! Authorisation (**Ours:**): the target member's grants must give the requester
//! `file-read` (the defaults do not).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tracing::{debug, warn};

use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::cluster::mcp_registry::{Pending, PendingKind};
use crate::ids::{self, now_ms};
use crate::protocol::{self, ext};
use crate::routing;

/// How often a waiting timer checks whether its request was answered elsewhere, so that an
/// answered request frees its replica slot soon (not only at its deadline).
const ANSWERED_CHECK: Duration = Duration::from_secs(1);

/// This replica's pending peer requests: one timer each, bounded by
/// `MAX_PENDING_PEER_REQUESTS_PER_REPLICA`.
#[derive(Debug, Default)]
pub struct PendingSlots {
    open: AtomicUsize,
}

/// One taken slot of [`PendingSlots`], given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<PendingSlots>,
    gauge: Gauge,
}

impl PendingSlots {
    /// The timers running.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot, unless `max` are taken (`0`: no bound).
    fn acquire(self: &Arc<Self>, max: usize, gauge: &Gauge) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        gauge.inc();
        Some(Slot {
            slots: self.clone(),
            gauge: gauge.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Why a pending request could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The requester presence, or this replica, has the most it may have waiting.
    TooMany {
        setting: &'static str,
        max: usize,
    },
    Unavailable(String),
}

/// Opens `pending`, routes `forward` to its target presence, and starts its timer.
pub(crate) async fn open_and_forward(
    ctx: &ServiceCtx,
    mesh_id: &str,
    pending: Pending,
    forward: Bytes,
) -> Result<(), OpenError> {
    let config = ctx.config();
    let max_replica = config.max_pending_peer_requests_per_replica;
    let Some(slot) = ctx
        .peer_pending()
        .acquire(max_replica, &ctx.metrics().peer_requests_pending)
    else {
        return Err(OpenError::TooMany {
            setting: "MAX_PENDING_PEER_REQUESTS_PER_REPLICA",
            max: max_replica,
        });
    };
    let max_presence = config.max_pending_peer_requests_per_presence;
    match ctx
        .mcp_registry()
        .open(mesh_id, &pending, max_presence, now_ms())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(OpenError::TooMany {
                setting: "MAX_PENDING_PEER_REQUESTS_PER_PRESENCE",
                max: max_presence,
            });
        }
        Err(e) => return Err(OpenError::Unavailable(e.to_string())),
    }
    if let Err(e) = deliver(ctx, mesh_id, &pending.target_presence_id, forward).await {
        // Nobody will answer what was never sent.
        let _ = ctx.mcp_registry().take(mesh_id, &pending.id, None).await;
        return Err(OpenError::Unavailable(e));
    }
    let (ctx2, mesh_id) = (ctx.clone(), mesh_id.to_string());
    ctx.spawn_until_stopping(async move {
        wait_out(&ctx2, &mesh_id, &pending.id, pending.deadline_ms).await;
        drop(slot);
    });
    Ok(())
}

/// The timer of one pending request: at its deadline, whoever still finds it open answers
/// the requester with the timeout error. Ends early once the request is resolved elsewhere.
async fn wait_out(ctx: &ServiceCtx, mesh_id: &str, id: &str, deadline_ms: i64) {
    loop {
        let left = deadline_ms - now_ms();
        if left <= 0 {
            break;
        }
        tokio::time::sleep(ANSWERED_CHECK.min(Duration::from_millis(left as u64))).await;
        if deadline_ms - now_ms() > 0
            && matches!(ctx.mcp_registry().is_open(mesh_id, id).await, Ok(false))
        {
            return;
        }
    }
    match ctx.mcp_registry().take(mesh_id, id, None).await {
        Ok(Some(p)) => {
            ctx.metrics().peer_request_finished("timed_out");
            let text = timeout_text(ctx, p.kind);
            fail(ctx, mesh_id, &p, &text).await;
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "pending peer request: timeout not resolved"),
    }
}

fn timeout_text(ctx: &ServiceCtx, kind: PendingKind) -> String {
    match kind {
        PendingKind::File | PendingKind::Dir => format!(
            "peer did not answer within {}s",
            ctx.config().peer_relay_timeout.as_secs()
        ),
        PendingKind::McpCall => format!(
            "MCP call timed out ({}s)",
            ctx.config().mcp_call_timeout.as_secs()
        ),
    }
}

/// The text a request gets when its target went away.
fn gone_text(p: &Pending) -> String {
    match p.kind {
        PendingKind::File | PendingKind::Dir => "target peer disconnected".into(),
        PendingKind::McpCall => format!("MCP server {:?} host disconnected", p.subject),
    }
}

/// The frame that answers `p` with `error`, in the reply type its requester waits for.
fn failure_frame(p: &Pending, error: &str) -> Bytes {
    let req_id = p.req_id.clone();
    match p.kind {
        PendingKind::File => protocol::encode(&ext::peer_relay::FileResponseForward {
            file_path: p.subject.clone(),
            content: None,
            error: Some(error.to_string()),
            req_id,
        }),
        PendingKind::Dir => protocol::encode(&ext::peer_relay::DirResponseForward {
            dir_path: p.subject.clone(),
            entries: None,
            error: Some(error.to_string()),
            req_id,
        }),
        PendingKind::McpCall => protocol::encode(&ext::mcp_registry::McpCallResult {
            result: None,
            error: Some(Value::String(error.to_string())),
            req_id,
        }),
    }
}

/// Answers the requester of `p` with `error`.
async fn fail(ctx: &ServiceCtx, mesh_id: &str, p: &Pending, error: &str) {
    if let Err(e) = deliver(
        ctx,
        mesh_id,
        &p.requester_presence_id,
        failure_frame(p, error),
    )
    .await
    {
        warn!(error = %e, "pending peer request: failure not delivered");
    }
}

/// Pushes `frame` to one presence, on whichever replica holds it.
pub(crate) async fn deliver(
    ctx: &ServiceCtx,
    mesh_id: &str,
    presence_id: &str,
    frame: Bytes,
) -> Result<(), String> {
    let event = MeshEvent::Deliver {
        presence_ids: vec![presence_id.to_string()].into(),
        priority: None,
        frame,
        trace: None,
    };
    ctx.publish(mesh_id, event).await.map_err(|e| e.to_string())
}

/// A presence's socket closed, or the presence ended: every request waiting on it fails at
/// once (its requesters get the "disconnected" error).
pub async fn target_gone(ctx: &ServiceCtx, mesh_id: &str, presence_id: &str) {
    let ids = match ctx
        .mcp_registry()
        .open_to(mesh_id, presence_id, now_ms())
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            warn!(error = %e, "pending peer requests of a departed target not failed");
            return;
        }
    };
    for id in ids {
        match ctx
            .mcp_registry()
            .take(mesh_id, &id, Some(presence_id))
            .await
        {
            Ok(Some(p)) => {
                ctx.metrics().peer_request_finished("target_gone");
                fail(ctx, mesh_id, &p, &gone_text(&p)).await;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "pending peer request of a departed target not failed"),
        }
    }
}

/// Why a relay request was refused. [`RelayError::code`] and [`RelayError::message`] are the
/// `error` frame's; [`RelayError::metric_label`] the `reason` of
/// `broker_relay_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// No `targetPubkey`, or no path.
    Invalid(&'static str),
    /// No live presence has the target key.
    NotFound,
    /// The target member's grants do not give the requester `file-read`.
    Forbidden,
    TooManyPending {
        setting: &'static str,
        max: usize,
    },
    Unavailable(String),
}

impl RelayError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RelayError::Invalid(_) => "invalid",
            RelayError::NotFound => "not_found",
            RelayError::Forbidden => "forbidden",
            RelayError::TooManyPending { .. } => "too_many_pending",
            RelayError::Unavailable(_) => "unavailable",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            RelayError::Invalid(_) => "invalid",
            RelayError::NotFound => "peer_not_found",
            RelayError::Forbidden => "forbidden",
            RelayError::TooManyPending { .. } => "too_many_pending",
            RelayError::Unavailable(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            RelayError::Invalid(what) => format!("{what} is required"),
            RelayError::NotFound => "target peer not connected".into(),
            RelayError::Forbidden => "the target's grants do not give you file-read".into(),
            RelayError::TooManyPending { setting, max } => {
                format!("more than {max} peer requests waiting for an answer ({setting})")
            }
            RelayError::Unavailable(e) => format!("peer relay unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for RelayError {}

/// A `peer_file_request` or `peer_dir_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRequest {
    /// [`PendingKind::File`] or [`PendingKind::Dir`].
    pub kind: PendingKind,
    pub target_pubkey: String,
    /// `filePath` or `dirPath`.
    pub path: String,
    /// `pattern` of a directory request.
    pub pattern: Option<String>,
    /// The requester's `_reqId`, echoed on the answer.
    pub req_id: Option<String>,
}

/// A `peer_file_request`/`peer_dir_request`: forwards it to the target and returns at once;
/// the answer (or the timeout) reaches the requester later as a push.
pub async fn request(ctx: &ServiceCtx, p: &Principal, req: RelayRequest) -> Result<(), RelayError> {
    let result = request_inner(ctx, p, req).await;
    if let Err(e) = &result {
        ctx.metrics().refuse_relay(e.metric_label());
    }
    result
}

async fn request_inner(
    ctx: &ServiceCtx,
    p: &Principal,
    req: RelayRequest,
) -> Result<(), RelayError> {
    if req.target_pubkey.is_empty() {
        return Err(RelayError::Invalid("targetPubkey"));
    }
    if req.path.is_empty() {
        return Err(RelayError::Invalid(match req.kind {
            PendingKind::Dir => "dirPath",
            _ => "filePath",
        }));
    }
    let mesh_id = &p.mesh.id;
    let records = ctx
        .presence()
        .list(mesh_id)
        .await
        .map_err(|e| RelayError::Unavailable(e.to_string()))?;
    let target = records
        .into_iter()
        .find(|r| {
            r.is_live()
                && (r.member_pubkey == req.target_pubkey
                    || r.session_pubkey.as_deref() == Some(req.target_pubkey.as_str()))
        })
        .ok_or(RelayError::NotFound)?;
    let members = ctx
        .members(mesh_id)
        .await
        .map_err(|e| RelayError::Unavailable(e.to_string()))?;
    let target_member = members
        .iter()
        .find(|m| m.id == target.member_id && m.revoked_at.is_none())
        .ok_or(RelayError::NotFound)?;
    if !routing::grants_allow(
        target_member,
        &p.member.pubkey,
        p.session_key.as_deref(),
        "file-read",
    ) {
        return Err(RelayError::Forbidden);
    }
    let id = ids::random_id(32);
    let timeout = ctx.config().peer_relay_timeout;
    let forward = match req.kind {
        PendingKind::Dir => protocol::encode(&ext::peer_relay::DirRequestForward {
            requester_pubkey: p.routing_key.clone(),
            dir_path: req.path.clone(),
            pattern: req.pattern.clone(),
            req_id: id.clone(),
        }),
        _ => protocol::encode(&ext::peer_relay::FileRequestForward {
            requester_pubkey: p.routing_key.clone(),
            file_path: req.path.clone(),
            req_id: id.clone(),
        }),
    };
    let pending = Pending {
        id,
        kind: req.kind,
        requester_presence_id: p.presence_id.clone(),
        target_presence_id: target.presence_id,
        req_id: req.req_id,
        subject: req.path,
        deadline_ms: now_ms() + timeout.as_millis() as i64,
    };
    open_and_forward(ctx, mesh_id, pending, forward)
        .await
        .map_err(|e| match e {
            OpenError::TooMany { setting, max } => RelayError::TooManyPending { setting, max },
            OpenError::Unavailable(e) => RelayError::Unavailable(e),
        })
}

/// The target's answer to a forward.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayAnswer {
    File {
        content: Option<String>,
        error: Option<String>,
    },
    Dir {
        entries: Option<Vec<String>>,
        error: Option<String>,
    },
}

/// A `peer_file_response`/`peer_dir_response`: delivered to the requester if `relay_id` (the
/// response's `_reqId`, copied from the forward) names a request still open that was sent to
/// this presence; dropped otherwise. Nothing is answered to the target.
pub async fn respond(ctx: &ServiceCtx, p: &Principal, relay_id: Option<&str>, answer: RelayAnswer) {
    let Some(relay_id) = relay_id else {
        ctx.metrics().peer_request_finished("unmatched");
        return;
    };
    let mesh_id = &p.mesh.id;
    let pending = match ctx
        .mcp_registry()
        .take(mesh_id, relay_id, Some(&p.presence_id))
        .await
    {
        Ok(Some(pending)) if pending.kind != PendingKind::McpCall => pending,
        Ok(Some(call)) => {
            // A target answering an MCP call with a relay response: the caller is told.
            ctx.metrics().peer_request_finished("dropped");
            fail(
                ctx,
                mesh_id,
                &call,
                "the host answered with a file relay response",
            )
            .await;
            return;
        }
        Ok(None) => {
            debug!("relay response matching no pending request of its sender: dropped");
            ctx.metrics().peer_request_finished("unmatched");
            return;
        }
        Err(e) => {
            warn!(error = %e, "relay response not delivered");
            ctx.metrics().peer_request_finished("dropped");
            return;
        }
    };
    let req_id = pending.req_id.clone();
    let frame = match (pending.kind, answer) {
        (PendingKind::Dir, RelayAnswer::Dir { entries, error }) => {
            protocol::encode(&ext::peer_relay::DirResponseForward {
                dir_path: pending.subject.clone(),
                entries,
                error,
                req_id,
            })
        }
        (PendingKind::File, RelayAnswer::File { content, error }) => {
            protocol::encode(&ext::peer_relay::FileResponseForward {
                file_path: pending.subject.clone(),
                content,
                error,
                req_id,
            })
        }
        _ => failure_frame(&pending, "the target answered with the wrong response type"),
    };
    match deliver(ctx, mesh_id, &pending.requester_presence_id, frame).await {
        Ok(()) => ctx.metrics().peer_request_finished("answered"),
        Err(e) => {
            warn!(error = %e, "relay response not delivered");
            ctx.metrics().peer_request_finished("dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let slots = Arc::new(PendingSlots::default());
        let gauge = Gauge::default();
        let a = slots.acquire(2, &gauge).expect("first");
        let _b = slots.acquire(2, &gauge).expect("second");
        assert!(slots.acquire(2, &gauge).is_none());
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.acquire(2, &gauge).is_some());
        assert!(slots.acquire(0, &gauge).is_some(), "0: no bound");
    }

    #[test]
    fn failures_answer_in_the_reply_type_the_requester_waits_for() {
        let p = Pending {
            id: "i".into(),
            kind: PendingKind::McpCall,
            requester_presence_id: "r".into(),
            target_presence_id: "t".into(),
            req_id: Some("q".into()),
            subject: "srv".into(),
            deadline_ms: 0,
        };
        let v: Value = serde_json::from_slice(&failure_frame(&p, &gone_text(&p))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "mcp_call_result", "error": "MCP server \"srv\" host disconnected", "_reqId": "q"})
        );
        let file = Pending {
            kind: PendingKind::File,
            subject: "a.txt".into(),
            ..p
        };
        let v: Value = serde_json::from_slice(&failure_frame(&file, "x")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "peer_file_response_forward", "filePath": "a.txt", "error": "x", "_reqId": "q"})
        );
    }
}
