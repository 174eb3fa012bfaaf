//! Frames of audit queries (extensions §8): `audit_query`, `audit_verify`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
