//! The operations of contexts (extensions §11): `share_context`, `get_context`,
//! `list_contexts`, without a transport.
//!
//! A share is committed to the store first (one record per member, upserted), then
//! announced: a `state_change{key:"_context:<name>", value: summary, updatedBy: name}` goes
//! on the mesh bus (`MeshEvent::Deliver`) to every presence of the mesh but the sharer's,
//! whichever replica holds it. It is not stored as state. Reads come from the store, so a
//! context shared through one replica is found through any other at once.
//!
//! Authorisation: any member (not revoked), as the spec says.

use serde_json::Value;
use tracing::warn;

use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::ids::{self, now_ms};
use crate::protocol::{self, ext};
use crate::store::contexts::Context;
use crate::store::{Member, StoreError};

/// Most contexts one `get_context` answers (the reference's bound).
pub const GET_CONTEXT_LIMIT: usize = 20;

/// Why a context operation was refused. [`ContextError::code`] and
/// [`ContextError::message`] are the `error` frame's; [`ContextError::metric_label`] the
/// `reason` of `broker_context_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextError {
    /// `share_context` without a summary (or only whitespace).
    SummaryMissing,
    /// A field over its bound (`what` names it and the setting).
    FieldTooLarge { what: &'static str, max: usize },
    /// The caller's member row is revoked (banned) or gone.
    Revoked { mesh_name: String },
    /// A backend failed; nothing was done.
    Unavailable(String),
}

impl ContextError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ContextError::SummaryMissing => "invalid",
            ContextError::FieldTooLarge { .. } => "field_too_large",
            ContextError::Revoked { .. } => "revoked",
            ContextError::Unavailable(_) => "store",
        }
    }

    /// The `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ContextError::SummaryMissing => "invalid",
            ContextError::FieldTooLarge { .. } => "field_too_large",
            ContextError::Revoked { .. } => "forbidden",
            ContextError::Unavailable(_) => "internal",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            ContextError::SummaryMissing => "share_context needs a non-empty summary".into(),
            ContextError::FieldTooLarge { what, max } => format!("{what} is over {max}"),
            ContextError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            ContextError::Unavailable(e) => format!("contexts unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for ContextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ContextError {}

fn unavailable(e: StoreError) -> ContextError {
    ContextError::Unavailable(e.to_string())
}

/// Counts a refusal.
fn counted<T>(ctx: &ServiceCtx, result: Result<T, ContextError>) -> Result<T, ContextError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_context(e.metric_label());
    }
    result
}

/// A `share_context`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareContext {
    pub summary: String,
    pub files_read: Vec<String>,
    pub key_findings: Vec<String>,
    pub tags: Vec<String>,
}

/// `peerName`: the member's display name, `"unknown"` when it has none.
fn peer_name(name: &str) -> String {
    if name.is_empty() {
        "unknown".into()
    } else {
        name.to_string()
    }
}

/// A stored context as `get_context` shows it.
pub fn row(c: &Context) -> ext::contexts::ContextRow {
    ext::contexts::ContextRow {
        peer_name: peer_name(&c.member_name),
        summary: c.summary.clone(),
        files_read: c.files_read.clone(),
        key_findings: c.key_findings.clone(),
        tags: c.tags.clone(),
        updated_at: ids::iso8601_ms(c.updated_at),
    }
}

/// A stored context as `list_contexts` shows it.
pub fn summary_row(c: &Context) -> ext::contexts::ContextSummary {
    ext::contexts::ContextSummary {
        peer_name: peer_name(&c.member_name),
        summary: c.summary.clone(),
        tags: c.tags.clone(),
        updated_at: ids::iso8601_ms(c.updated_at),
    }
}

/// The caller's member row as the member cache has it (dropped cluster-wide on a ban).
async fn current_member(ctx: &ServiceCtx, p: &Principal) -> Result<Member, ContextError> {
    let members = ctx.members(&p.mesh.id).await.map_err(unavailable)?;
    members
        .iter()
        .find(|m| m.id == p.member.id && m.revoked_at.is_none())
        .cloned()
        .ok_or_else(|| ContextError::Revoked {
            mesh_name: p.mesh.name.clone(),
        })
}

fn check(req: &ShareContext, ctx: &ServiceCtx) -> Result<(), ContextError> {
    let config = ctx.config();
    if req.summary.trim().is_empty() {
        return Err(ContextError::SummaryMissing);
    }
    if req.summary.len() > config.max_context_summary_bytes {
        return Err(ContextError::FieldTooLarge {
            what: "summary bytes (MAX_CONTEXT_SUMMARY_BYTES)",
            max: config.max_context_summary_bytes,
        });
    }
    for list in [&req.files_read, &req.key_findings, &req.tags] {
        if list.len() > config.max_context_items {
            return Err(ContextError::FieldTooLarge {
                what: "the entries of filesRead, keyFindings or tags (MAX_CONTEXT_ITEMS)",
                max: config.max_context_items,
            });
        }
        if list.iter().any(|i| i.len() > config.max_context_item_bytes) {
            return Err(ContextError::FieldTooLarge {
                what: "an entry of filesRead, keyFindings or tags, in bytes (MAX_CONTEXT_ITEM_BYTES)",
                max: config.max_context_item_bytes,
            });
        }
    }
    Ok(())
}

/// `share_context`: validates, upserts the caller's record, announces it; returns the
/// record's id.
pub async fn share(
    ctx: &ServiceCtx,
    p: &Principal,
    req: ShareContext,
) -> Result<String, ContextError> {
    counted(ctx, share_inner(ctx, p, req).await)
}

async fn share_inner(
    ctx: &ServiceCtx,
    p: &Principal,
    req: ShareContext,
) -> Result<String, ContextError> {
    check(&req, ctx)?;
    let member = current_member(ctx, p).await?;
    let name = peer_name(&member.display_name);
    let context = Context {
        id: ids::random_id(32),
        mesh_id: p.mesh.id.clone(),
        member_id: member.id,
        member_name: member.display_name,
        summary: req.summary,
        files_read: req.files_read,
        key_findings: req.key_findings,
        tags: req.tags,
        updated_at: now_ms(),
    };
    let summary = context.summary.clone();
    let id = ctx
        .store()
        .share_context(context)
        .await
        .map_err(unavailable)?;
    announce(ctx, p, &name, summary).await;
    Ok(id)
}

/// Pushes `state_change{key:"_context:<name>"}` to every presence of the mesh but the
/// sharer's. The share stands if this fails (the bus is at most once anyway).
async fn announce(ctx: &ServiceCtx, p: &Principal, name: &str, summary: String) {
    let records = match ctx.presence().list(&p.mesh.id).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "presence unavailable; context state_change not published");
            return;
        }
    };
    let presence_ids: Vec<String> = records
        .into_iter()
        .filter(|r| r.presence_id != p.presence_id)
        .map(|r| r.presence_id)
        .collect();
    if presence_ids.is_empty() {
        return;
    }
    let frame = protocol::encode(&ext::state::StateChange {
        key: ext::contexts::context_key(name),
        value: Value::String(summary),
        updated_by: name.to_string(),
    });
    let event = MeshEvent::Deliver {
        presence_ids: presence_ids.into(),
        priority: None,
        frame,
        trace: None,
    };
    if let Err(e) = ctx.publish(&p.mesh.id, event).await {
        warn!(error = %e, "context state_change not published");
    }
}

/// `get_context`: the newest [`GET_CONTEXT_LIMIT`] contexts whose summary contains
/// `query` case-insensitively or that carry it as a tag. A query longer than any stored
/// field could be matches nothing and does not reach the store.
pub async fn find(
    ctx: &ServiceCtx,
    p: &Principal,
    query: &str,
) -> Result<Vec<Context>, ContextError> {
    let config = ctx.config();
    if query.len()
        > config
            .max_context_summary_bytes
            .max(config.max_context_item_bytes)
    {
        return Ok(Vec::new());
    }
    counted(
        ctx,
        ctx.store()
            .find_contexts(&p.mesh.id, query, GET_CONTEXT_LIMIT)
            .await
            .map_err(unavailable),
    )
}

/// `list_contexts`: the mesh's contexts, newest first, at most `MAX_CONTEXTS_LISTED`.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<Context>, ContextError> {
    counted(
        ctx,
        ctx.store()
            .list_contexts(&p.mesh.id, ctx.config().max_contexts_listed)
            .await
            .map_err(unavailable),
    )
}
