//! Frames of memory (extensions §2): `remember`, `recall`, `forget`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
