//! Frames of delivery status (extensions §7): `message_status`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
