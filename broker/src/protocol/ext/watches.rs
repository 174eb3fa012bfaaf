//! Frames of URL watches (extensions §17): `watch`, `unwatch`, `watch_list`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
