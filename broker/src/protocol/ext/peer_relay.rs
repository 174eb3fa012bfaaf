//! Frames of the peer file and directory relay (extensions §13).

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
