//! The operations of audit queries (extensions §8): `audit_query`, `audit_verify`, without a
//! transport. Both read the store, so every replica answers with the same chain.
//!
//! **Ours:** only the mesh owner or an admin may read the chain (its entries say who
//! messaged whom and which state keys changed); a page is at most [`MAX_LIMIT`] entries.

use super::{Principal, ServiceCtx};
use crate::ids::iso8601_ms;
use crate::protocol::ext::audit_query::{AuditRow, AuditVerifyResult};
use crate::service::moderation::{self, ModerationError, Verb};
use crate::store::{AuditEntry, verify_audit};

/// Entries of one page when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;
/// Most entries of one page; a larger `limit` is capped.
pub const MAX_LIMIT: usize = 500;

/// `audit_query`.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub event_type: Option<String>,
}

/// A page of the chain as the wire shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    pub entries: Vec<AuditRow>,
    pub total: i64,
}

/// Why an audit read was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditError {
    /// Neither the mesh owner nor an admin.
    Forbidden,
    /// The store failed (`audit_query_error` / `audit_verify_error`).
    Store { verify: bool, message: String },
}

impl AuditError {
    /// The `error.code` on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            AuditError::Forbidden => "forbidden",
            AuditError::Store { verify: false, .. } => "audit_query_error",
            AuditError::Store { verify: true, .. } => "audit_verify_error",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            AuditError::Forbidden => "only owner or admin can read the audit log".into(),
            AuditError::Store { message, .. } => message.clone(),
        }
    }

    /// The `reason` label of the refusal metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuditError::Forbidden => "forbidden",
            AuditError::Store { .. } => "store",
        }
    }
}

/// `limit` (default 50, capped at 500) and `offset` (default 0), negative values as 0.
pub fn page_bounds(limit: Option<i64>, offset: Option<i64>) -> (usize, usize) {
    let limit = limit.map_or(DEFAULT_LIMIT, |l| l.clamp(0, MAX_LIMIT as i64) as usize);
    (limit, offset.unwrap_or(0).max(0) as usize)
}

async fn authorize(ctx: &ServiceCtx, p: &Principal, verify: bool) -> Result<(), AuditError> {
    match moderation::authorize(ctx, p, Verb::ListBans).await {
        Ok(()) => Ok(()),
        Err(ModerationError::Forbidden { .. }) => Err(AuditError::Forbidden),
        Err(e) => Err(AuditError::Store {
            verify,
            message: e.message(),
        }),
    }
}

/// `audit_query`: a page of the caller's mesh's chain, newest first.
pub async fn query(
    ctx: &ServiceCtx,
    p: &Principal,
    req: QueryRequest,
) -> Result<QueryPage, AuditError> {
    authorize(ctx, p, false).await?;
    let (limit, offset) = page_bounds(req.limit, req.offset);
    let store_error = |e: crate::store::StoreError| AuditError::Store {
        verify: false,
        message: e.to_string(),
    };
    let page = ctx
        .store()
        .audit_page(&p.mesh.id, req.event_type.as_deref(), limit, offset)
        .await
        .map_err(store_error)?;
    // Display names of the actors; a member gone from the mesh shows its id.
    let members = ctx.members(&p.mesh.id).await.map_err(store_error)?;
    let actor = |e: &AuditEntry| match &e.actor_member_id {
        Some(id) => members
            .iter()
            .find(|m| &m.id == id)
            .map_or_else(|| id.clone(), |m| m.display_name.clone()),
        None => "system".to_string(),
    };
    Ok(QueryPage {
        entries: page
            .entries
            .iter()
            .map(|e| AuditRow {
                id: e.seq,
                event_type: e.event_type.clone(),
                actor: actor(e),
                payload: e.payload.clone(),
                hash: e.hash.clone(),
                created_at: iso8601_ms(e.created_at),
            })
            .collect(),
        total: page.total,
    })
}

/// `audit_verify`: walks the caller's mesh's chain (protocol §7).
pub async fn verify(
    ctx: &ServiceCtx,
    p: &Principal,
    req_id: Option<String>,
) -> Result<AuditVerifyResult, AuditError> {
    authorize(ctx, p, true).await?;
    let entries = ctx
        .store()
        .audit_entries(&p.mesh.id)
        .await
        .map_err(|e| AuditError::Store {
            verify: true,
            message: e.to_string(),
        })?;
    let verdict = verify_audit(&entries);
    Ok(AuditVerifyResult {
        valid: verdict.valid,
        entries: verdict.entries,
        broken_at: verdict.broken_at,
        req_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_default_to_50_and_are_capped_at_500() {
        assert_eq!(page_bounds(None, None), (50, 0));
        assert_eq!(page_bounds(Some(10_000), Some(7)), (500, 7));
        assert_eq!(page_bounds(Some(-3), Some(-1)), (0, 0));
    }
}
