//! Frames of tasks (extensions §3): `create_task`, `claim_task`, `complete_task`, `list_tasks`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
