//! Frames of the families this broker does not offer (extensions §19, §0.3): answered at once.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
