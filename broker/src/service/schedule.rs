//! The operations of scheduled messages and reminders (extensions §5): `schedule`, `list_scheduled`, `cancel_scheduled`, without a transport.
//!
//! Firing is here too ([`run_due`], called by the `scheduler` worker of every replica):
//! an entry fires through the normal send path ([`super::send::send_as`]) as its member,
//! independent of any socket, so rate limit, grants, the durable queue for offline
//! recipients and the audit apply as to any `send`. The fire's `messageId` (and its
//! `client_message_id`, the queue's idempotency key) is derived from (scheduledId, fire
//! number): a fire repeated after a crash between delivery and commit is queued once, and
//! a repeated fan-out carries the same id, which clients de-duplicate.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::cron::Cron;
use super::send::{SendError, SendOptions, SendRequest};
use super::{Principal, PrincipalKind, ServiceCtx};
use crate::cluster::presence::PeerRole;
use crate::config::Config;
use crate::ids;
use crate::protocol::Priority;
use crate::protocol::ext::schedule::{Schedule, ScheduledRow};
use crate::protocol::target::{self, Target};
use crate::store::StoreError;
use crate::store::schedule::{FireOutcome, ScheduledEntry};

/// The only `subtype` an entry may carry (a peer must not forge `system` pushes).
pub const REMINDER: &str = "reminder";

/// How long a fire that could not be made waits before it is tried again.
const RETRY_MS: i64 = 5_000;

/// Why a request was refused. [`ScheduleError::code`] and [`ScheduleError::message`] are
/// the `error` frame's fields, [`ScheduleError::metric_label`] the `reason` of
/// `broker_scheduled_rejected_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// Not five valid fields, or no fire within 366 days.
    InvalidCron(String),
    /// The member already has `SCHEDULE_MAX_PER_MEMBER` active entries.
    TooMany { max: usize },
    /// A bad target spec, subtype or size.
    Invalid(String),
    /// The store failed.
    Unavailable(String),
}

impl ScheduleError {
    pub fn code(&self) -> &'static str {
        match self {
            ScheduleError::InvalidCron(_) => "invalid_cron",
            ScheduleError::TooMany { .. } => "too_many_scheduled",
            ScheduleError::Invalid(_) => "invalid_schedule",
            ScheduleError::Unavailable(_) => "internal",
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            ScheduleError::InvalidCron(_) => "invalid_cron",
            ScheduleError::TooMany { .. } => "limit",
            ScheduleError::Invalid(_) => "invalid",
            ScheduleError::Unavailable(_) => "store",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ScheduleError::InvalidCron(expr) => format!("Invalid cron expression: {expr}"),
            ScheduleError::TooMany { max } => {
                format!("too many scheduled messages: at most {max} active per member")
            }
            ScheduleError::Invalid(why) => why.clone(),
            ScheduleError::Unavailable(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ScheduleError {}

fn unavailable(e: impl std::fmt::Display) -> ScheduleError {
    ScheduleError::Unavailable(e.to_string())
}

/// An accepted entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub id: String,
    /// The first fire (epoch ms).
    pub deliver_at: i64,
    pub cron: Option<String>,
}

/// The scheduler's "now": the wall clock plus `SCHEDULE_NOW_OFFSET_MS` (0 in production;
/// tests move a replica's scheduler forward in time with it).
pub fn scheduler_now(config: &Config) -> i64 {
    ids::now_ms() + config.schedule_now_offset_ms
}

/// A 32-character base62 id derived from `parts` (SHA-256): stable across replicas and
/// restarts, and in the charset `claudemesh msg-status` accepts.
pub fn derived_id(parts: &[&str]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .take(32)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// The `messageId` of fire number `fire` (from 1) of entry `scheduled_id`.
pub fn fire_message_id(scheduled_id: &str, fire: i64) -> String {
    derived_id(&["scheduled", scheduled_id, &fire.to_string()])
}

/// A random UUID (version 4), the form of `scheduledId`.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `schedule`: validates, rewrites a session key of the caller's own member to the member
/// key, computes the first fire and stores the entry (within the member's limit).
pub async fn schedule(
    ctx: &ServiceCtx,
    p: &Principal,
    req: Schedule,
) -> Result<Scheduled, ScheduleError> {
    let result = schedule_inner(ctx, p, req).await;
    if let Err(e) = &result {
        ctx.metrics().reject_scheduled(e.metric_label());
    }
    result
}

async fn schedule_inner(
    ctx: &ServiceCtx,
    p: &Principal,
    req: Schedule,
) -> Result<Scheduled, ScheduleError> {
    let config = ctx.config();
    let now = scheduler_now(config);
    let cron = req
        .cron
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let deliver_at = match &cron {
        Some(expr) => Cron::parse(expr)
            .ok()
            .and_then(|c| c.next_after(now))
            .ok_or_else(|| ScheduleError::InvalidCron(expr.clone()))?,
        None => req.deliver_at,
    };
    let subtype = match req.subtype.as_deref() {
        None | Some("") => None,
        Some(REMINDER) => Some(REMINDER.to_string()),
        Some(other) => {
            return Err(ScheduleError::Invalid(format!(
                "unsupported subtype {:?}: only \"reminder\"",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    let mut to = req.to.trim().to_string();
    let direct = match target::classify(&to) {
        Ok(Target::Direct(key)) => Some(key.to_string()),
        Ok(_) => None,
        Err(e) => return Err(ScheduleError::Invalid(e.to_string())),
    };
    if let Some(key) = direct
        && key != p.member.pubkey
        && own_session_key(ctx, p, &key).await
    {
        // `claudemesh remind` addresses the command's throwaway session: the entry goes
        // to the member, whichever of its sessions is connected when it fires (or queued).
        to = p.member.pubkey.clone();
    }
    let ciphertext_len = req.message.len().div_ceil(3) * 4;
    if ciphertext_len + to.len() > config.max_message_bytes {
        return Err(ScheduleError::Invalid("payload too large".into()));
    }
    let entry = ScheduledEntry {
        id: uuid_v4(),
        mesh_id: p.mesh.id.clone(),
        presence_id: p.presence_id.clone(),
        member_id: p.member.id.clone(),
        to,
        message: req.message,
        deliver_at,
        cron: cron.clone(),
        subtype,
        fired_count: 0,
        cancelled: false,
        fired_at: None,
        created_at: ids::now_ms(),
    };
    let id = entry.id.clone();
    let max = config.schedule_max_per_member;
    match ctx.store().create_scheduled(entry, max).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Err(ScheduleError::TooMany { max }),
        Err(e) => return Err(unavailable(e)),
    }
    ctx.audit(
        &p.mesh.id,
        "message_scheduled",
        Some(&p.member.id),
        serde_json::json!({"scheduledId": id, "cron": cron}),
    );
    Ok(Scheduled {
        id,
        deliver_at,
        cron,
    })
}

/// Whether `key` is the session key of the caller or of a live session of its member.
async fn own_session_key(ctx: &ServiceCtx, p: &Principal, key: &str) -> bool {
    if p.session_key.as_deref() == Some(key) {
        return true;
    }
    match ctx.presence().list(&p.mesh.id).await {
        Ok(records) => records
            .iter()
            .any(|r| r.member_id == p.member.id && r.session_pubkey.as_deref() == Some(key)),
        Err(e) => {
            warn!(error = %e, "presence unavailable; scheduled target kept as given");
            false
        }
    }
}

/// `list_scheduled`: the caller's member's active entries.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<ScheduledRow>, ScheduleError> {
    let entries = ctx
        .store()
        .list_scheduled(&p.mesh.id, &p.member.id)
        .await
        .map_err(unavailable)?;
    Ok(entries
        .into_iter()
        .map(|e| ScheduledRow {
            fired_count: e.cron.is_some().then_some(e.fired_count),
            id: e.id,
            to: e.to,
            message: e.message,
            deliver_at: e.deliver_at,
            created_at: e.created_at,
            cron: e.cron,
            subtype: e.subtype,
        })
        .collect())
}

/// `cancel_scheduled`: `true` when an active entry of the caller's member was cancelled.
/// A fire in progress finishes first (the cancel waits for its row lock).
pub async fn cancel(ctx: &ServiceCtx, p: &Principal, id: &str) -> Result<bool, ScheduleError> {
    let ok = ctx
        .store()
        .cancel_scheduled(&p.mesh.id, &p.member.id, id)
        .await
        .map_err(unavailable)?;
    if ok {
        ctx.audit(
            &p.mesh.id,
            "scheduled_cancelled",
            Some(&p.member.id),
            serde_json::json!({"scheduledId": id}),
        );
    }
    Ok(ok)
}

/// One poll: claims up to `limit` due entries, fires each and records the outcomes in the
/// claim's transaction. Returns how many were claimed.
pub async fn run_due(ctx: &ServiceCtx, limit: usize) -> Result<usize, StoreError> {
    let now = scheduler_now(ctx.config());
    let claim = ctx.store().claim_due(now, limit).await?;
    let entries = claim.entries().to_vec();
    let mut outcomes = Vec::with_capacity(entries.len());
    for e in &entries {
        outcomes.push((e.id.clone(), fire(ctx, e, now).await));
    }
    claim.commit(outcomes).await?;
    Ok(entries.len())
}

/// Fires one entry as its member.
pub async fn fire(ctx: &ServiceCtx, e: &ScheduledEntry, now: i64) -> FireOutcome {
    let min_period = ctx.config().schedule_min_cron_period.as_millis() as i64;
    let next = e
        .cron
        .as_deref()
        .and_then(|expr| Cron::parse(expr).ok())
        .and_then(|c| c.next_spaced(now, e.deliver_at, min_period));
    let done = FireOutcome::Fired { at: now, next };
    let finished = FireOutcome::Fired {
        at: now,
        next: None,
    };
    let retry = FireOutcome::Retry {
        retry_at: now + RETRY_MS,
    };
    let store = ctx.store();
    let (mesh, member) = match (
        store.mesh(&e.mesh_id).await,
        store.member(&e.mesh_id, &e.member_id).await,
    ) {
        (Ok(Some(mesh)), Ok(Some(member))) => (mesh, member),
        (Ok(_), Ok(_)) => {
            // The mesh or the member is gone: the entry can never fire.
            ctx.metrics().fire_scheduled("refused");
            return finished;
        }
        _ => {
            ctx.metrics().fire_scheduled("retry");
            return retry;
        }
    };
    let message_id = fire_message_id(&e.id, e.fired_count + 1);
    let principal = Principal {
        kind: PrincipalKind::Member,
        routing_key: member.pubkey.clone(),
        display_name: member.display_name.clone(),
        presence_id: e.presence_id.clone(),
        session_key: None,
        peer_role: PeerRole::Session,
        mesh,
        member,
    };
    let req = SendRequest {
        target_spec: e.to.clone(),
        priority: Priority::Now,
        nonce: String::new(),
        ciphertext: STANDARD.encode(e.message.as_bytes()),
        client_message_id: Some(message_id.clone()),
    };
    let options = SendOptions {
        message_id: Some(message_id.clone()),
        subtype: e.subtype.clone(),
    };
    match super::send::send_as(ctx, &principal, req, options).await {
        Ok(outcome) => {
            debug!(
                scheduled_id = e.id,
                message_id = outcome.message_id,
                "scheduled message fired"
            );
            ctx.metrics().fire_scheduled("sent");
            done
        }
        Err(SendError::Revoked { .. }) => {
            ctx.metrics().fire_scheduled("refused");
            finished
        }
        Err(
            err @ (SendError::RateLimited { .. }
            | SendError::Unavailable(_)
            | SendError::OutcomeUnknown(_)),
        ) => {
            debug!(scheduled_id = e.id, error = %err, "scheduled message postponed");
            ctx.metrics().fire_scheduled("retry");
            retry
        }
        Err(err) => {
            debug!(scheduled_id = e.id, error = %err, "scheduled message refused by the send path");
            ctx.metrics().fire_scheduled("refused");
            done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_ids_are_stable_distinct_and_in_the_msg_status_charset() {
        let a = fire_message_id("0d5f3c1e-0000-4000-8000-000000000000", 1);
        assert_eq!(
            a,
            fire_message_id("0d5f3c1e-0000-4000-8000-000000000000", 1)
        );
        assert_ne!(
            a,
            fire_message_id("0d5f3c1e-0000-4000-8000-000000000000", 2)
        );
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn uuids_have_the_v4_shape() {
        let u = uuid_v4();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert_ne!(u, uuid_v4());
    }
}
