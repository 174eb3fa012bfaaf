//! The direct-message queue as a recipient sees it (spec §4.2): `drain` claims what is
//! queued for the principal under a lease, and `client_ack` confirms a pushed message so
//! that it is never claimed again. One pair of functions for every transport: the
//! WebSocket session pushes what `drain` returns and keeps, per connection, what it pushed
//! (the candidates of a `client_ack` by client id) and the re-push timers; a REST inbox
//! keeps its own.

use super::{Principal, ServiceCtx};
use crate::ids::now_ms;
use crate::store::{Claim, MessageRef, QueuedMessage};

/// Direct messages claimed per store round trip.
pub const CLAIM_BATCH: usize = 512;

/// One claim of the principal's queued direct messages.
#[derive(Debug, Clone, Copy)]
pub struct DrainRequest {
    /// Take messages still leased to the member's earlier connections (a new connection
    /// takes over whatever they had claimed).
    pub steal: bool,
    /// `false` while the caller's presence is busy: only `now` messages are taken.
    pub all_priorities: bool,
    /// At most this many messages (see [`CLAIM_BATCH`]).
    pub limit: usize,
}

/// What a drain claimed.
#[derive(Debug, Clone)]
pub struct Drained {
    /// In queue order; each is hidden from other drains (without `steal`) until
    /// [`Drained::lease_until`], and claimed again after it unless confirmed.
    pub messages: Vec<QueuedMessage>,
    /// When the lease of these messages ends (ms epoch, `CLAIM_LEASE_MS` after the claim).
    pub lease_until: i64,
    /// The batch was full: more may be queued, drain again.
    pub more: bool,
}

/// Why a drain claimed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The store failed. The claim may have committed with its reply lost: its rows are
    /// then hidden until `lease_until`, so drain again both soon (a claim that did not
    /// happen) and when that lease ends (one that did).
    Unavailable { message: String, lease_until: i64 },
}

impl QueueError {
    /// A label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            QueueError::Unavailable { .. } => "store",
        }
    }

    /// The error's text (a drain's failure is not put on the wire).
    pub fn message(&self) -> String {
        match self {
            QueueError::Unavailable { message, .. } => message.clone(),
        }
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for QueueError {}

/// Claims the principal's deliverable direct messages, in queue order, under a lease of
/// `CLAIM_LEASE_MS`. Messages addressed to another session key of the member are not
/// taken.
pub async fn drain(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: DrainRequest,
) -> Result<Drained, QueueError> {
    let now = now_ms();
    let lease_ms = ctx.config().claim_lease.as_millis() as i64;
    let lease_until = now + lease_ms;
    let claim = Claim {
        mesh_id: &principal.mesh.id,
        member_id: &principal.member.id,
        session_key: principal.session_key.as_deref(),
        all_priorities: req.all_priorities,
        steal: req.steal,
        lease_ms,
        now_ms: now,
        limit: req.limit,
    };
    match ctx.store().claim(claim).await {
        Ok(messages) => Ok(Drained {
            more: messages.len() == req.limit,
            messages,
            lease_until,
        }),
        Err(e) => Err(QueueError::Unavailable {
            message: e.to_string(),
            lease_until,
        }),
    }
}

/// Records the lease of direct messages the caller pushed without a claim (a doorbell
/// carried them, `MeshEvent::Direct`), until `lease_until`: from then on they are hidden
/// from other connections' claims as if this one had claimed them, and claimed again
/// after it unless confirmed. Returns how many were not leased: delivered meanwhile, or
/// claimed by another connection first (which pushes them too: a duplicate, never a loss).
pub async fn record_pushed(
    ctx: &ServiceCtx,
    mesh_id: &str,
    member_id: &str,
    ids: &[String],
    now: i64,
    lease_until: i64,
) -> Result<usize, QueueError> {
    match ctx
        .store()
        .lease_pushed(mesh_id, member_id, ids, now, lease_until)
        .await
    {
        Ok(leased) => Ok(ids.len() - leased.len()),
        Err(e) => Err(QueueError::Unavailable {
            message: e.to_string(),
            lease_until,
        }),
    }
}

/// How a `client_ack` names the messages it confirms.
#[derive(Debug, Clone)]
pub enum AckRequest<'a> {
    /// By the broker's id: the store confirms it only among the principal's own messages.
    BrokerId(&'a str),
    /// By the sender's `client_message_id`: only among the messages the caller says were
    /// pushed to it, as `(broker id, client id)` (other senders may use the same client id
    /// for messages this caller never got).
    ClientId {
        client_id: &'a str,
        pushed: Vec<(&'a str, Option<&'a str>)>,
    },
}

impl AckRequest<'_> {
    /// The broker ids the ack names: the caller stops tracking them, whether or not the
    /// store records their confirmation (one it could not record is claimed again when its
    /// lease ends).
    pub fn named(&self) -> Vec<String> {
        match self {
            AckRequest::BrokerId(id) => vec![id.to_string()],
            AckRequest::ClientId { client_id, pushed } => pushed
                .iter()
                .filter(|(_, c)| *c == Some(*client_id))
                .map(|(id, _)| id.to_string())
                .collect(),
        }
    }
}

/// What a `client_ack` confirmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Marked delivered now: never claimed again.
    pub confirmed: Vec<String>,
    /// Named, but no undelivered message of the principal has that id (already confirmed,
    /// swept, or not the principal's).
    pub unmatched: Vec<String>,
}

/// Why a `client_ack` was not (entirely) recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    /// The store failed for `unrecorded` (each is pushed again when its lease ends);
    /// `outcome` is what the other named ids came to.
    Unavailable {
        unrecorded: Vec<String>,
        outcome: AckOutcome,
        message: String,
    },
}

impl AckError {
    /// A label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AckError::Unavailable { .. } => "store",
        }
    }

    /// The error's text (a `client_ack` is not answered on the wire).
    pub fn message(&self) -> String {
        match self {
            AckError::Unavailable { message, .. } => message.clone(),
        }
    }
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for AckError {}

/// Confirms the messages `req` names as delivered to the principal's member. Each is
/// confirmed by its broker id, one store call each; a failure does not stop the others.
pub async fn client_ack(
    ctx: &ServiceCtx,
    principal: &Principal,
    req: AckRequest<'_>,
) -> Result<AckOutcome, AckError> {
    let mut outcome = AckOutcome::default();
    let mut unrecorded = Vec::new();
    let mut message = String::new();
    for id in req.named() {
        match ctx
            .store()
            .mark_delivered(
                &principal.mesh.id,
                &principal.member.id,
                MessageRef::Broker(&id),
            )
            .await
        {
            Ok(true) => outcome.confirmed.push(id),
            Ok(false) => outcome.unmatched.push(id),
            Err(e) => {
                message = e.to_string();
                unrecorded.push(id);
            }
        }
    }
    if unrecorded.is_empty() {
        Ok(outcome)
    } else {
        Err(AckError::Unavailable {
            unrecorded,
            outcome,
            message,
        })
    }
}
