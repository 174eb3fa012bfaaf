//! `list_peers` (spec §4.3): the presences a principal may see.

use super::{Principal, ServiceCtx};
use crate::cluster::presence::PresenceRecord;

/// Why the peer list could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeersError {
    /// The presence backend is unavailable: an `error` `internal` (an unreadable list is
    /// not an empty one).
    Unavailable(String),
}

impl PeersError {
    /// The `error` frame's code.
    pub fn code(&self) -> &'static str {
        "internal"
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            PeersError::Unavailable(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for PeersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for PeersError {}

/// The live presences of the principal's mesh that are visible, and its own (visible or
/// not), in the backend's order.
pub async fn list_peers(
    ctx: &ServiceCtx,
    principal: &Principal,
) -> Result<Vec<PresenceRecord>, PeersError> {
    let records = ctx
        .presence()
        .list(&principal.mesh.id)
        .await
        .map_err(|e| PeersError::Unavailable(e.to_string()))?;
    Ok(records
        .into_iter()
        .filter(|r| r.is_live() && (r.visible || r.presence_id == principal.presence_id))
        .collect())
}
