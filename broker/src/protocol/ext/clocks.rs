//! Frames of simulation clocks (extensions §6): `set_clock`, `pause_clock`, `resume_clock`, `get_clock`.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
