//! Frames of shared state (extensions §1): `set_state`, `get_state`, `list_state`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
