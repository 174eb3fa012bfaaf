//! The operations of mesh info (extensions §18): `mesh_info`, without a transport.
//!
//! Everything comes from the store and the presence registry, so every replica answers
//! the same. `fileCount` counts the mesh's files (extensions §19.1; 0 with
//! `FILES_ENABLED=false`). Families this broker does not offer count as empty
//! (`tables: []`, `collections: []`).

use std::collections::BTreeSet;

use super::{Principal, ServiceCtx};
use crate::protocol::ext::info::{MeshInfoResult, TaskCounts};

/// Why `mesh_info` failed: a backend did (`error{code:"internal"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoError(pub String);

impl InfoError {
    pub fn code(&self) -> &'static str {
        "internal"
    }

    pub fn message(&self) -> String {
        self.0.clone()
    }
}

fn unavailable(e: impl std::fmt::Display) -> InfoError {
    InfoError(e.to_string())
}

/// A bound of `0` means none.
fn bound(n: usize) -> usize {
    if n == 0 { usize::MAX } else { n }
}

/// `mesh_info`: an overview of the caller's mesh.
pub async fn mesh_info(
    ctx: &ServiceCtx,
    p: &Principal,
    req_id: Option<String>,
) -> Result<MeshInfoResult, InfoError> {
    let mesh_id = &p.mesh.id;
    let records = ctx.presence().list(mesh_id).await.map_err(unavailable)?;
    let live: Vec<_> = records.iter().filter(|r| r.is_live()).collect();
    let groups: BTreeSet<String> = live
        .iter()
        .flat_map(|r| r.groups.iter().map(|g| format!("@{}", g.name)))
        .collect();
    let me = live
        .iter()
        .find(|r| r.routing_key() == p.routing_key)
        .map(|r| r.display_name.clone())
        .unwrap_or_else(|| "unknown".to_string());
    let your_groups = records
        .iter()
        .find(|r| r.presence_id == p.presence_id)
        .map(|r| r.groups.clone())
        .unwrap_or_default();

    let config = ctx.config();
    let state_keys = ctx
        .store()
        .list_state(mesh_id, bound(config.max_state_keys_per_mesh))
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|e| e.key)
        .collect();
    let tally = ctx.store().task_tally(mesh_id).await.map_err(unavailable)?;
    let tasks = TaskCounts {
        open: tally.open,
        claimed: tally.claimed,
        done: tally.done,
    };
    let file_count = if ctx.config().files_enabled {
        ctx.store().file_count(mesh_id).await.map_err(unavailable)?
    } else {
        0
    };
    let memory_count = ctx
        .store()
        .memory_count(mesh_id)
        .await
        .map_err(unavailable)?;
    let streams = ctx
        .store()
        .list_streams(mesh_id)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|s| s.name)
        .collect();

    Ok(MeshInfoResult {
        mesh: mesh_id.clone(),
        peers: live.len(),
        groups: groups.into_iter().collect(),
        state_keys,
        memory_count,
        file_count,
        tasks,
        streams,
        tables: vec![],
        collections: vec![],
        your_name: me,
        your_groups,
        req_id,
    })
}
