//! Frames of scheduled messages and reminders (extensions §5): `schedule`, `list_scheduled`, `cancel_scheduled`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
