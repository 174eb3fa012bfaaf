//! Frames of mesh info (extensions §18): `mesh_info`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
