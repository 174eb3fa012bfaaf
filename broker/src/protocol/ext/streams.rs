//! Frames of streams (extensions §4): `create_stream`, `subscribe`, `unsubscribe`, `publish`, `list_streams`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
