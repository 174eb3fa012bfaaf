//! Frames of mesh info (extensions §18): `mesh_info`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag.

use serde::{Deserialize, Serialize};

use crate::protocol::Group;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["mesh_info"];

/// A client frame of this family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MeshInfoFrame {
    MeshInfo {},
}

/// Task counts by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub open: u64,
    pub claimed: u64,
    pub done: u64,
}

/// `mesh_info_result{…, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "mesh_info_result", rename_all = "camelCase")]
pub struct MeshInfoResult {
    /// The mesh id.
    pub mesh: String,
    /// Live presences of the mesh, all roles.
    pub peers: usize,
    /// `@name` of every group a live presence is in.
    pub groups: Vec<String>,
    pub state_keys: Vec<String>,
    /// Memories not forgotten.
    pub memory_count: u64,
    /// Always 0: this broker offers no file storage (§19.1).
    pub file_count: u64,
    pub tasks: TaskCounts,
    /// Stream names.
    pub streams: Vec<String>,
    /// Always empty: no per-mesh SQL (§19.4).
    pub tables: Vec<String>,
    /// Always empty: no vector collections (§19.2).
    pub collections: Vec<String>,
    /// The display name of the live presence whose routing key is the caller's.
    pub your_name: String,
    pub your_groups: Vec<Group>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_decodes_without_fields() {
        let f: MeshInfoFrame = serde_json::from_str(r#"{"type":"mesh_info"}"#).unwrap();
        assert_eq!(f, MeshInfoFrame::MeshInfo {});
    }
}
