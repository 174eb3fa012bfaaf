//! Frames of the peer-hosted MCP registry (extensions §14).

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
