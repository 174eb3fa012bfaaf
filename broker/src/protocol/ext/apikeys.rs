//! Frames of API keys (extensions §10): `apikey_create`, `apikey_list`, `apikey_revoke`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
